package chatcore

import (
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestPrimaryReportsItsOwnEpoch: a primary that hears of a newer epoch (from
// gossip, a fenced save or a backup's refusal) keeps reporting the epoch of
// its own term until it steps down; then it reports backup at the newer one.
// Reporting "primary at the newer epoch" in between made the nemesis see two
// primaries in one epoch (CI, seed 3: a SIGSTOPped primary resumed).
func TestPrimaryReportsItsOwnEpoch(t *testing.T) {
	tc := startCore(t, nil)
	own := tc.c.Epoch()
	newer := own + 50
	tc.c.role.Observe(newer)
	if tc.c.Epoch() != newer {
		t.Fatalf("known epoch %d, want %d", tc.c.Epoch(), newer)
	}
	check := func(wantRole string, wantEpoch uint64) {
		t.Helper()
		st, err := tc.cl.Status(ctxT(t), &chatpb.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Role != wantRole || st.Epoch != wantEpoch {
			t.Errorf("/status says %s at epoch %d, want %s at %d", st.Role, st.Epoch, wantRole, wantEpoch)
		}
		if got := tc.metric(t, "hachat_core_role", "role", wantRole); got != 1 {
			t.Errorf("hachat_core_role{role=%q} = %v, want 1", wantRole, got)
		}
		if got := tc.metric(t, "hachat_core_epoch"); got != float64(wantEpoch) {
			t.Errorf("hachat_core_epoch = %v, want %d", got, wantEpoch)
		}
	}
	check(RolePrimary, own)
	tc.c.stepDown("test", newer)
	check(RoleBackup, newer)
}
