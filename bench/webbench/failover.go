package webbench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hachat/hachat/clusterctl"
)

// failover keeps the senders going, kills the primary core with SIGKILL
// after a second, and measures what the customers and agents saw.
func (b *bench) failover(ctx context.Context) (*Failover, error) {
	cores := map[string]string{"core-a": b.bc.Layout.Addrs.CoreAGRPC, "core-b": b.bc.Layout.Addrs.CoreBGRPC}
	var primary string
	for name, addr := range cores {
		sts := clusterctl.Ctl{}.Status(ctx, []string{addr}, time.Second)
		if sts[0].Status.GetRole() == "primary" {
			primary = name
		}
	}
	if primary == "" {
		return nil, clusterctl.ErrNoPrimary
	}
	f := &Failover{Killed: primary}
	from, to := b.o.Messages, len(b.tr.sent)
	reconnBefore := b.reconn.Load()
	stop := make(chan struct{})
	sendDone := make(chan int, 1)
	go func() { sendDone <- b.send(ctx, from, to, stop) }() // owned here: stop ends it, and we wait below
	stopSenders := func() int {
		select {
		case <-stop:
		default:
			close(stop)
		}
		return <-sendDone
	}
	select {
	case <-ctx.Done():
		stopSenders()
		return f, ctx.Err()
	case <-time.After(time.Second): // the load settles before the kill
	}
	killAt := time.Now().UnixNano()
	fmt.Fprintf(b.o.Progress, "kill -9 %s under load\n", primary)
	if err := b.bc.Kill(ctx, primary); err != nil {
		stopSenders()
		return f, fmt.Errorf("kill %s: %w", primary, err)
	}
	// Wait for a message sent after the kill to reach an agent.
	firstNew := func() int64 {
		var first int64
		for i := from; i < to; i++ {
			s := b.tr.sent[i].Load()
			if s == 0 {
				continue
			}
			if a := b.tr.agentAt[i].Load(); s > killAt && a != 0 && (first == 0 || a < first) {
				first = a
			}
		}
		return first
	}
	err := b.waitFor(ctx, 30*time.Second, "a message sent after the kill delivered", func() bool { return firstNew() != 0 })
	if err == nil {
		select { // the load goes on a second after the promotion
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	stopSenders()
	if err == nil {
		_ = b.waitFor(ctx, 30*time.Second, "every acknowledged message delivered", func() bool {
			for i := from; i < to; i++ {
				if b.tr.acked[i].Load() != 0 && b.tr.agentAt[i].Load() == 0 {
					return false
				}
			}
			return true
		})
	}

	var lastAck int64
	var around []time.Duration
	var agentTimes, pushTimes []int64
	window := func(t int64) bool { return t > killAt-int64(time.Second) }
	for i := from; i < to; i++ {
		s := b.tr.sent[i].Load()
		if s == 0 {
			continue
		}
		f.Sent++
		a, d, p := b.tr.acked[i].Load(), b.tr.agentAt[i].Load(), b.tr.pushAt[i].Load()
		if a != 0 {
			f.Acked++
			if a < killAt {
				lastAck = max(lastAck, a)
			}
			if d == 0 {
				f.Lost++
			}
		}
		if d != 0 {
			f.Delivered++
			if window(d) {
				agentTimes = append(agentTimes, d)
			}
			if s > killAt-int64(time.Second) && s < killAt+int64(time.Second) {
				around = append(around, time.Duration(d-s))
			}
		}
		if p != 0 && window(p) {
			pushTimes = append(pushTimes, p)
		}
	}
	if fn := firstNew(); fn != 0 && lastAck != 0 {
		f.Gap = time.Duration(fn - lastAck)
	}
	f.AgentGap, f.PushGap = longestPause(agentTimes), longestPause(pushTimes)
	f.P50, f.P99, f.Max = summary(around)
	f.Reconnecting = int(b.reconn.Load() - reconnBefore)
	return f, err
}

// longestPause returns the longest interval between two consecutive times
// of ts (sorted in place).
func longestPause(ts []int64) time.Duration {
	slices.Sort(ts)
	var longest int64
	for i := 1; i < len(ts); i++ {
		longest = max(longest, ts[i]-ts[i-1])
	}
	return time.Duration(longest)
}
