package chatcore

import (
	"testing"
)

// TestBackupInSyncMetric: replication lag reads 0 when no backup is
// connected at all, so "lag 0" alone does not mean "in sync";
// hachat_core_backup_in_sync does: 0 alone, 1 once the backup acknowledged
// its snapshot, 0 again when it dies, 1 when it is back.
func TestBackupInSyncMetric(t *testing.T) {
	store := newMemStore()
	la, lb := listen(t), listen(t)
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(t, "core-a primary", func() bool { return a.c.role.IsPrimary() })
	am := &testCore{c: a.c}
	if lag, in := am.metric(t, "hachat_core_replication_lag"), am.metric(t, "hachat_core_backup_in_sync"); lag != 0 || in != 0 {
		t.Fatalf("alone: lag %v, in sync %v; want lag 0 (the trap) and in sync 0", lag, in)
	}
	b := startNode(t, "core-b", RoleBackup, la.Addr().String(), lb, store, nil)
	waitInSync(t, a, "core-b")
	waitFor(t, "in sync reported", func() bool { return am.metric(t, "hachat_core_backup_in_sync") == 1 })

	addr := b.addr
	b.kill()
	waitFor(t, "the dead backup reported", func() bool { return am.metric(t, "hachat_core_backup_in_sync") == 0 })
	ln := relisten(t, addr)
	startNode(t, "core-b", RoleBackup, la.Addr().String(), ln, store, nil)
	waitInSync(t, a, "core-b")
	waitFor(t, "in sync again", func() bool { return am.metric(t, "hachat_core_backup_in_sync") == 1 })
}
