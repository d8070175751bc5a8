package chatcore

import "testing"

// TestPairNegotiatesBatches: a backup of this version asks for batches in
// its hello, and the primary's link sends them.
func TestPairNegotiatesBatches(t *testing.T) {
	a, _ := pair(t, newMemStore(), nil)
	if l := a.c.repl.Current(); l == nil || !l.Batches() {
		t.Fatal("the backup's link does not take batches")
	}
}
