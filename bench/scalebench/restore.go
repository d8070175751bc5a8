package scalebench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hachat/hachat/bench/benchcluster"
	"github.com/hachat/hachat/bench/workers"
	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/telemetry"
)

// RestoreOptions shape the restore measurement.
type RestoreOptions struct {
	// Sessions is how many live sessions (a customer and an agent each)
	// the pair holds when its primary is killed (default 10,000: one
	// pair's load on a 2-core machine).
	Sessions int
	// Concurrency is how many sessions are started at once (default 32).
	Concurrency int
	// Timeout bounds the wait for the restoration (default 2 minutes).
	Timeout time.Duration
}

func (o *RestoreOptions) defaults() {
	if o.Sessions <= 0 {
		o.Sessions = 10_000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 32
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
}

// RestoreReport is what the restore measurement measured.
type RestoreReport struct {
	// Sessions is how many the backup restored (its "restoration done"
	// log line), Source from where (replica: its synchronous copy).
	Sessions int    `json:"sessions"`
	Source   string `json:"source"`
	// Took is the restoration itself as the promoted core logs it: every
	// session's disconnected/reconnected notices appended and replicated
	// where a backup is, pending transcript saves resumed.
	Took time.Duration `json:"took_ns"`
	// FromKill is from the kill -9 of the primary to the end of the
	// restoration: detection and promotion included.
	FromKill time.Duration `json:"from_kill_ns"`
	// Setup is how long starting the sessions took.
	Setup time.Duration `json:"setup_ns"`
}

// PerSecond is the restore rate: sessions restored per second of Took.
func (r RestoreReport) PerSecond() float64 {
	if r.Took <= 0 {
		return 0
	}
	return float64(r.Sessions) / r.Took.Seconds()
}

// restoredLine is the promoted core's JSON log line that ends a
// restoration (chatcore: "restoration done").
type restoredLine struct {
	Time     time.Time `json:"time"`
	Msg      string    `json:"msg"`
	Sessions int       `json:"sessions"`
	Source   string    `json:"source"`
	Took     int64     `json:"took"` // slog's JSON handler writes durations in nanoseconds
}

// parseRestored returns the first "restoration done" line of a JSON log
// that restored at least one session.
func parseRestored(r io.Reader) (restoredLine, bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l restoredLine
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Msg != "restoration done" || l.Sessions == 0 {
			continue
		}
		return l, true
	}
	return restoredLine{}, false
}

// RunRestore measures a real promotion: it starts a pair of core processes
// (demo's pair stage, JSON logs), starts Sessions chats on the primary
// (each with its agent, replicated synchronously to the backup), kills the
// primary with SIGKILL and waits for the backup's "restoration done" log
// line, which says how many sessions it restored and how long that took.
func RunRestore(ctx context.Context, o RestoreOptions, progress io.Writer) (RestoreReport, error) {
	o.defaults()
	var rep RestoreReport
	bc, err := benchcluster.Start(ctx, demo.StagePair, progress, "--log-format=json",
		fmt.Sprintf("--max-sessions=%d", o.Sessions+100), "--send-rate=100000", "--send-burst=100000")
	if err != nil {
		return rep, err
	}
	defer bc.Stop()
	ccfg := chatclient.DefaultConfig()
	ccfg.Targets = []string{bc.Layout.Addrs.CoreAGRPC}
	cl, err := chatclient.New(ccfg, telemetry.Discard())
	if err != nil {
		return rep, fmt.Errorf("chat client: %w", err)
	}
	defer cl.Close()
	start := time.Now()
	var made atomic.Int64
	err = workers.Range(ctx, o.Concurrency, 0, o.Sessions, nil, func(ctx context.Context, i int) error {
		js, err := cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "bench", Nickname: "customer-" + strconv.Itoa(i), Subject: "scale"})
		if err != nil {
			return fmt.Errorf("start session %d: %w", i, err)
		}
		if _, err := cl.Join(ctx, &chatpb.JoinRequest{SessionId: js.GetAuth().GetSessionId(), Nickname: "agent",
			Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: benchcluster.ServiceToken}); err != nil {
			return fmt.Errorf("join session %d: %w", i, err)
		}
		if n := made.Add(1); n%2000 == 0 {
			fmt.Fprintf(progress, "restore: %d/%d sessions started\n", n, o.Sessions)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	rep.Setup = time.Since(start)
	fmt.Fprintf(progress, "restore: %d sessions in %v; kill -9 core-a\n", o.Sessions, rep.Setup.Round(time.Millisecond))
	killed := time.Now()
	if err := bc.Kill(ctx, "core-a"); err != nil {
		return rep, fmt.Errorf("kill core-a: %w", err)
	}
	logPath := bc.LogPath("core-b")
	deadline := time.Now().Add(o.Timeout)
	for {
		f, err := os.Open(logPath)
		if err != nil {
			return rep, fmt.Errorf("core-b's log: %w", err)
		}
		l, ok := parseRestored(f)
		f.Close()
		if ok {
			rep.Sessions, rep.Source, rep.Took = l.Sessions, l.Source, time.Duration(l.Took)
			rep.FromKill = l.Time.Sub(killed)
			fmt.Fprintf(progress, "restore: core-b restored %d sessions from %s in %v (%.0f sessions/s)\n",
				rep.Sessions, rep.Source, rep.Took.Round(time.Millisecond), rep.PerSecond())
			return rep, nil
		}
		if time.Now().After(deadline) {
			return rep, fmt.Errorf("core-b logged no restoration within %v of the kill (log %s)", o.Timeout, logPath)
		}
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
