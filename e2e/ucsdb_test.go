package e2e

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// startUCSBinary runs `hachat ucs` on db at a free address and waits until it
// answers /healthz; it returns the address and the running command.
func startUCSBinary(t *testing.T, bin, db string, args ...string) (string, *exec.Cmd) {
	t.Helper()
	addr, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"ucs", "--db=" + db, "--http=" + addr}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr, cmd
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("hachat ucs on %s not ready:\n%s", db, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopUCSBinary stops it with SIGTERM and waits for it.
func stopUCSBinary(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

// TestUCSRefusesCorruptDatabase runs the real `hachat ucs` on damaged copies
// of a database it wrote: each start must fail at once with exit status 1 and
// one line naming the file and the damage, never a panic and never an empty
// start. A missing file is a new database.
func TestUCSRefusesCorruptDatabase(t *testing.T) {
	bin := harness.Binary(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "ucs.db")

	// A missing file is a new database: ucs starts and writes it.
	addr, cmd := startUCSBinary(t, bin, db, "--writer-token=w", "--reader-token=r")
	ucs := ucsmock.NewClient("http://"+addr, &http.Client{Timeout: 10 * time.Second}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 40 {
		chat := "chat-" + strings.Repeat("x", i+1)
		var evs []*chatpb.Event
		for n := uint64(1); n <= 30; n++ {
			evs = append(evs, &chatpb.Event{SessionId: chat, Index: n, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE,
				Text: strings.Repeat("card number 4111 ", 4), Visibility: chatpb.Visibility_VISIBILITY_ALL,
				UtcUnixMs: 1700000000000, From: &chatpb.Participant{Id: "p", Nickname: "n", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}})
		}
		if _, err := ucs.WithToken("w").Save(ctx, ucsmock.SaveRequest{ChatID: chat, Service: "svc", Epoch: 1, Writer: "core-a", Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	stopUCSBinary(t, cmd)
	good, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}

	// The page of a leaf in use near the middle of the file.
	bdb, err := bolt.Open(db, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	pageSize := bdb.Info().PageSize
	var leaves []int
	err = bdb.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			p, err := tx.Page(id)
			if err != nil || p == nil {
				return err
			}
			if p.Type == "leaf" {
				leaves = append(leaves, id)
			}
		}
	})
	bdb.Close()
	if err != nil || len(leaves) == 0 {
		t.Fatalf("no leaf page: %v", err)
	}
	middle := int64(leaves[len(leaves)/2]) * int64(pageSize)
	rng := rand.New(rand.NewPCG(3, 3))
	random := make([]byte, pageSize)
	for i := range random {
		random[i] = byte(rng.UintN(256))
	}
	withRandom := bytes.Clone(good)
	copy(withRandom[middle:], random)

	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"zero-length", []byte{}, "zero-length"},
		{"truncated", good[:len(good)/2], "truncated"},
		{"random bytes in the middle", withRandom, "corrupt database"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ucs.db")
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			addr, err := demo.FreePort(false)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "ucs", "--db="+path, "--http="+addr)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err = cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("hachat ucs on a %s database: %v, want exit status 1\nstderr:\n%s", tc.name, err, stderr.String())
			}
			// The logger may have written structured lines before; the
			// refusal itself is the last line, alone.
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "hachat ucs: ") || !strings.Contains(last, tc.want) || !strings.Contains(last, path) {
				t.Errorf("last line %q: want \"hachat ucs: ...\" naming %q and the file", last, tc.want)
			}
			if all := stderr.String(); strings.Contains(all, "panic") || strings.Contains(all, "goroutine ") {
				t.Errorf("stderr shows a panic:\n%s", all)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, tc.file) {
				t.Error("the refused file was modified")
			}
		})
	}
}
