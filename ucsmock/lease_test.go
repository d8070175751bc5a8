package ucsmock

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestHolderLease: a failover claim (ClaimEpochIfSilent) does not depose a
// holder that renewed within the asked silence, and succeeds once the
// holder went quiet; Renew refuses a stale or foreign holder. Run against
// MemStore and against the HTTP server through Client, on bbolt and on
// PostgreSQL.
func TestHolderLease(t *testing.T) {
	_, client := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	_, pg := newPGServer(t, newPGDatabase(t))
	for name, st := range map[string]Store{"memstore": NewMemStore(1), "http": client, "pg": pg} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			const svc = "lease"
			if _, err := st.ClaimEpoch(ctx, svc, 0, 1, "core-a"); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Renew(ctx, svc, 1, "core-a"); err != nil {
				t.Fatalf("renew by the holder: %v", err)
			}
			_, err := st.ClaimEpochIfSilent(ctx, svc, 1, 2, "core-b", time.Minute)
			var ce *EpochConflictError
			if !errors.Is(err, ErrHolderAlive) || !errors.Is(err, ErrEpochConflict) || !errors.As(err, &ce) || !ce.HolderAlive || ce.Holder != "core-a" {
				t.Fatalf("claim over a live holder: %v", err)
			}
			if e, _ := st.Epoch(ctx, svc); e.Epoch != 1 || e.Holder != "core-a" {
				t.Fatalf("a refused claim changed the epoch: %+v", e)
			}
			for _, tc := range []struct {
				name   string
				epoch  uint64
				holder string
				want   error
			}{
				{"another holder", 1, "core-b", ErrEpochConflict},
				{"a newer epoch nobody claimed", 2, "core-a", ErrEpochConflict},
				{"invalid epoch 0", 0, "core-a", ErrInvalid},
			} {
				if _, err := st.Renew(ctx, svc, tc.epoch, tc.holder); !errors.Is(err, tc.want) {
					t.Errorf("renew %s: %v, want %v", tc.name, err, tc.want)
				}
			}
			time.Sleep(30 * time.Millisecond) // the holder's silence
			e, err := st.ClaimEpochIfSilent(ctx, svc, 1, 2, "core-b", 20*time.Millisecond)
			if err != nil || e.Epoch != 2 || e.Holder != "core-b" {
				t.Fatalf("claim over a silent holder: %+v %v", e, err)
			}
			if _, err := st.Renew(ctx, svc, 1, "core-a"); !errors.Is(err, ErrStaleEpoch) {
				t.Fatalf("renew of a deposed holder: %v, want ErrStaleEpoch", err)
			}
			// The new holder's claim counts as heard: an immediate claim of
			// a third party asking for silence is refused.
			if _, err := st.ClaimEpochIfSilent(ctx, svc, 2, 3, "core-c", time.Minute); !errors.Is(err, ErrHolderAlive) {
				t.Fatalf("claim right after a claim: %v", err)
			}
		})
	}
}
