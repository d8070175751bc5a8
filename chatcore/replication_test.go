package chatcore

import "testing"

// TestPairNegotiatesBatches: a backup of this version asks for batches and
// progress batches in its hello, and the primary's link sends them: the
// save progress of many sessions reaches the backup (as SaveProgressBatch;
// package replica's TestProgressNegotiated checks an older backup still
// gets one SaveProgress per session).
func TestPairNegotiatesBatches(t *testing.T) {
	a, b := pair(t, newMemStore(), func(c *Config) { c.TranscriptAutoSave = 1 })
	if l := a.c.repl.Current(); l == nil || !l.Batches() || !l.ProgressBatches() {
		t.Fatal("the backup's link does not take batches and progress batches")
	}
	var ids []string
	for range 20 {
		cust, _ := a.chat(t)
		ids = append(ids, cust.SessionId)
	}
	savedThrough := func(n *node, id string) uint64 {
		s := n.c.session(id)
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.save.SavedThrough
	}
	waitFor(t, "save progress of every session replicated", func() bool {
		for _, id := range ids {
			if p := savedThrough(a, id); p == 0 || savedThrough(b, id) != p {
				return false
			}
		}
		return true
	})
}
