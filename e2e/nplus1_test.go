package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/xds"
)

// TestPairLostBothCores is issue 10's N+1 restoration with real processes:
// two pairs (--pairs 2) with their epochs in etcd, two control planes, a
// proxyless grpc-go client driven only by xDS. Chats on both pairs, a
// message acknowledged in each; the test waits until UCS holds every
// acknowledged message of pair 2 (transcript-auto-save 1: a save after
// every message) and then kills both cores of pair 2 with SIGKILL. The
// control plane assigns pair 2 to pair 1 (adopt-grace 2s) and routes pair
// 2's header there; core-a claims pair 2's epoch once its lease lapsed,
// restores its chats from UCS with the disconnected/reconnected notices,
// and the resent messages of pair 2's chats are acknowledged there. No
// acknowledged message is lost, pair 1's chats see no notice, and pair 2's
// epoch in etcd is now held by core-a, so pair 2's cores, restarted, could
// not take it back.
func TestPairLostBothCores(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, CoordMembers: 1, Pairs: 2,
		CoreArgs: []string{"--transcript-auto-save=1"},
		Tune: func(p demo.Plan) demo.Plan {
			var drop []string
			for _, part := range p.Parts {
				switch part.Kind {
				case demo.KindProxy, demo.KindWebAPI, demo.KindInteraction:
					drop = append(drop, part.Name)
				}
			}
			return p.Without(drop...).WithKind(demo.KindXDS, "--adopt-grace=2s")
		}})
	for _, name := range []string{"core-a", "core-2a"} {
		c.WaitRole(name, "primary", 30*time.Second)
	}
	for _, name := range []string{"core-b", "core-2b"} {
		c.WaitRole(name, "backup", 30*time.Second)
	}
	chat := proxylessChat(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	chats := startChats(ctx, t, chat, 24, "n")
	perPair := map[string]int{}
	for _, ch := range chats {
		perPair[ch.pair()]++
	}
	if perPair["1"] == 0 || perPair["2"] == 0 {
		t.Fatalf("chats per pair %v: want some on each", perPair)
	}
	sendAll(ctx, t, chat, chats, "before")

	// Every acknowledged message of pair 2 is in UCS (its second copy
	// beside the backup's): losing both cores then loses nothing.
	harness.Eventually(t, "pair 2's acknowledged messages saved in UCS", 30*time.Second, func() error {
		for _, ch := range chats {
			if ch.pair() != "2" {
				continue
			}
			tr, err := c.UCS().Transcript(ctx, ch.auth.GetSessionId())
			if err != nil {
				return err
			}
			have := map[string]bool{}
			for _, e := range tr.Events {
				have[e.GetClientMessageId()] = true
			}
			for _, id := range ch.acked {
				if !have[id] {
					return errNotYet(ch.auth.GetSessionId() + " lacks " + id)
				}
			}
		}
		return nil
	})

	c.Kill("core-2a", syscall.SIGKILL)
	c.Kill("core-2b", syscall.SIGKILL)
	killed := time.Now()
	waitPairs(t, c, "pair 2 adopted by pair 1", func(ps []xds.PairInfo) bool {
		for _, p := range ps {
			if p.Name == "2" {
				return p.AdoptedBy == "1"
			}
		}
		return false
	})
	t.Logf("pair 2 adopted %v after the kill", time.Since(killed).Round(time.Millisecond))
	sendAll(ctx, t, chat, chats, "after")
	t.Logf("every chat acknowledged its message %v after the kill", time.Since(killed).Round(time.Millisecond))

	noticed := checkPairChats(ctx, t, chat, chats)
	t.Logf("chats with failover notices, by pair: %v (chats per pair %v)", noticed, perPair)
	if noticed["1"] != 0 || noticed["2"] != perPair["2"] {
		t.Errorf("failover notices in %v chats by pair, want all %d of pair 2's and none of pair 1's", noticed, perPair["2"])
	}

	if out, err := c.Ctl("pairs"); err != nil || !containsLine(out, "2 ", " 1") {
		t.Errorf("ctl pairs does not show pair 2 adopted by pair 1: %v\n%s", err, out)
	}
	metrics := httpGet(t, c, "core-a", "/metrics")
	if !strings.Contains(metrics, `hachat_core_adopted_pairs{pair="2"} 1`) {
		t.Errorf("core-a does not report adopting pair 2")
	}
	if !strings.Contains(metrics, `hachat_core_adopted_sessions_total{pair="2"}`) {
		t.Errorf("core-a reports no session of pair 2 restored")
	}
	if ep, err := c.UCS().Epoch(ctx, "hachat-2"); err != nil || ep.Holder != "core-a" {
		t.Errorf("pair 2's epoch at UCS after the adoption: %+v %v, want held by core-a", ep, err)
	}
}

// containsLine reports whether a line of out starts with prefix and ends
// with suffix.
func containsLine(out, prefix, suffix string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) && strings.HasSuffix(strings.TrimRight(l, " "), suffix) {
			return true
		}
	}
	return false
}

// errNotYet is a condition not met yet.
type errNotYet string

func (e errNotYet) Error() string { return string(e) }
