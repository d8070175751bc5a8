package ucsmock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry"
)

// childDBEnv, when set, makes the test binary run as a ucsmock server process
// on that database (see TestMain): the durability test starts it, kills it
// with SIGKILL and starts it again. Re-executing the test binary keeps the
// test independent of the other parts of cmd/hachat (the binary-level check
// of `hachat ucs` belongs to the e2e suite, which owns e2e/harness).
const childDBEnv = "UCSMOCK_TEST_CHILD_DB"

func TestMain(m *testing.M) {
	if db := os.Getenv(childDBEnv); db != "" {
		os.Exit(runChild(db))
	}
	code := m.Run()
	stopTestPG()
	os.Exit(code)
}

// runChild serves ucsmock on a free port and prints "ADDR host:port" once
// it listens. It runs until killed.
func runChild(db string) int {
	cfg := DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DBPath = db
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(context.Background()) }()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for srv.Addr() == "" {
		select {
		case err := <-errc:
			fmt.Fprintln(os.Stderr, err)
			return 1
		case <-tick.C:
		}
	}
	fmt.Printf("ADDR %s\n", srv.Addr())
	<-errc
	return 0
}

// startChild starts a ucsmock process on db and returns it with a client.
func startChild(t *testing.T, db string) (*exec.Cmd, *Client) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childDBEnv+"="+db)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addrc <- a
			}
		}
	}()
	select {
	case a := <-addrc:
		return cmd, NewClient("http://"+a, &http.Client{Timeout: 10 * time.Second}, telemetry.Discard())
	case <-time.After(20 * time.Second):
		t.Fatal("ucsmock child did not start")
	}
	return nil, nil
}

// TestKill9Durability saves from several writers into a real ucsmock
// process, kills it with SIGKILL in the middle of the stream, restarts it on
// the same database, and checks that every acknowledged save is there.
func TestKill9Durability(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	db := filepath.Join(t.TempDir(), "ucs.db")
	cmd, c := startChild(t, db)
	ctx := context.Background()

	const writers = 4
	var (
		mu    sync.Mutex
		acked = map[string]uint64{} // chat -> highest acknowledged index
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chat := fmt.Sprintf("chat-%d", w)
			for i := uint64(1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := c.Save(ctx, SaveRequest{ChatID: chat, Service: "chat", Epoch: 1, Writer: "core-a", Events: evs(chat, i, i)})
				if err != nil {
					if !errors.Is(err, ErrUnavailable) {
						t.Errorf("save %s/%d: %v", chat, i, err)
					}
					return
				}
				mu.Lock()
				acked[chat] = i
				mu.Unlock()
			}
		}()
	}
	// Kill once every writer has had a few saves acknowledged.
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	for {
		mu.Lock()
		n := len(acked)
		low := uint64(1 << 62)
		for _, v := range acked {
			low = min(low, v)
		}
		mu.Unlock()
		if n == writers && low >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writers made no progress: %v", acked)
		}
		<-tick.C
	}
	tick.Stop()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	close(stop)
	wg.Wait()

	_, c2 := startChild(t, db)
	mu.Lock()
	defer mu.Unlock()
	for chat, hi := range acked {
		tr, err := c2.Transcript(ctx, chat)
		if err != nil {
			t.Fatalf("%s after kill -9: %v", chat, err)
		}
		if uint64(len(tr.Events)) < hi {
			t.Fatalf("%s: %d events after kill -9, %d were acknowledged", chat, len(tr.Events), hi)
		}
		for i, e := range tr.Events {
			if e.GetIndex() != uint64(i+1) || e.GetText() != fmt.Sprintf("message %d", i+1) {
				t.Fatalf("%s: event %d is %v", chat, i, e)
			}
		}
		t.Logf("%s: %d acknowledged, %d stored", chat, hi, len(tr.Events))
	}
}
