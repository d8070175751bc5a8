package role

import (
	"sync"
	"testing"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestNewIsBackupWithoutStream(t *testing.T) {
	s := New()
	if s.Role() != Backup || s.IsPrimary() || s.Epoch() != 0 {
		t.Fatalf("new state: %s primary=%v epoch %d", s.Role(), s.IsPrimary(), s.Epoch())
	}
	if s.Stream().Err() == nil {
		t.Fatal("a backup's stream context is alive")
	}
	if r, e := s.RoleEpoch(); r != Backup || e != 0 {
		t.Fatalf("RoleEpoch %s %d", r, e)
	}
}

// TestTermCycle walks backup -> primary -> backup and checks what each
// transition changes, that effects run before Changed's waiters wake, and
// that a primary reports its own term's epoch until it steps down.
func TestTermCycle(t *testing.T) {
	s := New()
	ch := s.Changed()
	ran := false
	s.BecomePrimary(3, true, func() {
		ran = true
		if closed(ch) {
			t.Error("Changed woke before the effects ran")
		}
	})
	if !ran || !closed(ch) {
		t.Fatalf("BecomePrimary: effects ran %v, Changed closed %v", ran, closed(ch))
	}
	if !s.IsPrimary() || s.Role() != Primary || s.Epoch() != 3 || s.Unmerged() || s.Stream().Err() != nil {
		t.Fatalf("primary at 3: %s epoch %d unmerged %v stream %v", s.Role(), s.Epoch(), s.Unmerged(), s.Stream().Err())
	}
	stream := s.Stream()
	if tm := s.Term(); !tm.Primary || tm.Epoch != 3 || tm.Stream != stream {
		t.Fatalf("Term %+v", tm)
	}

	s.Observe(5) // a newer claim heard of, not yet confirmed: still primary
	if r, e := s.RoleEpoch(); r != Primary || e != 3 || s.Epoch() != 5 {
		t.Fatalf("after observing 5: RoleEpoch %s %d, Epoch %d; want primary 3, 5", r, e, s.Epoch())
	}

	s.SetDraining(true)
	if !s.Draining() {
		t.Fatal("SetDraining(true) did not drain")
	}
	ch = s.Changed()
	ran = false
	if !s.StepDown(7, func() {
		ran = true
		if closed(ch) {
			t.Error("Changed woke before the effects ran")
		}
	}) {
		t.Fatal("a primary did not step down")
	}
	if !ran || !closed(ch) || stream.Err() == nil {
		t.Fatalf("StepDown: effects %v, Changed closed %v, stream %v", ran, closed(ch), stream.Err())
	}
	if s.IsPrimary() || s.Draining() || s.Unmerged() || s.Epoch() != 7 {
		t.Fatalf("after step down: primary %v draining %v epoch %d", s.IsPrimary(), s.Draining(), s.Epoch())
	}
	if r, e := s.RoleEpoch(); r != Backup || e != 7 {
		t.Fatalf("RoleEpoch %s %d, want backup 7", r, e)
	}
}

func TestStepDownOfBackupOnlyObserves(t *testing.T) {
	s := New()
	ch := s.Changed()
	if s.StepDown(4, func() { t.Error("effects ran for a backup") }) {
		t.Fatal("a backup stepped down")
	}
	if s.Epoch() != 4 || closed(ch) {
		t.Fatalf("epoch %d, Changed closed %v", s.Epoch(), closed(ch))
	}
	s.Observe(2)
	if s.Epoch() != 4 {
		t.Fatalf("an older epoch replaced a newer one: %d", s.Epoch())
	}
}

func TestUnmergedUntilFinishRestoring(t *testing.T) {
	s := New()
	if s.FinishRestoring(func() { t.Error("effects ran for a backup") }) {
		t.Fatal("a backup finished restoring")
	}
	s.BecomePrimary(2, false, nil)
	if !s.IsPrimary() || !s.Unmerged() {
		t.Fatalf("restoring primary: primary %v unmerged %v", s.IsPrimary(), s.Unmerged())
	}
	ch := s.Changed()
	ran := false
	if !s.FinishRestoring(func() { ran = true }) || !ran || s.Unmerged() {
		t.Fatalf("FinishRestoring: effects %v unmerged %v", ran, s.Unmerged())
	}
	if closed(ch) {
		t.Fatal("FinishRestoring woke Changed: it is no role change")
	}
	if s.FinishRestoring(func() { t.Error("effects ran twice") }) {
		t.Fatal("a serving primary finished restoring again")
	}
}

// TestRoleEpochNeverPairsPrimaryWithNewerEpoch races readers against epochs
// heard of and a step down: a reader sees the primary at its term epoch or
// the backup, never the primary at the newer epoch.
func TestRoleEpochNeverPairsPrimaryWithNewerEpoch(t *testing.T) {
	s := New()
	s.BecomePrimary(10, true, nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r, e := s.RoleEpoch(); r == Primary && e != 10 {
					t.Errorf("primary reported at epoch %d", e)
					return
				}
			}
		})
	}
	for e := uint64(11); e < 200; e++ {
		s.Observe(e)
	}
	s.StepDown(200, nil)
	close(stop)
	wg.Wait()
	if s.Epoch() != 200 {
		t.Fatalf("epoch %d after concurrent observes, want 200", s.Epoch())
	}
}

// TestStepDownByOwnTermIsRefused: a step-down decided on an epoch that is
// not newer than the primary's term (read before the claim landed: the
// switchover race where the old primary's hello carries the epoch this core
// just claimed) leaves the primary serving; a newer epoch or an unknown one
// (0) steps it down.
func TestStepDownByOwnTermIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		newer uint64
		down  bool
	}{
		{"own term", 39, false},
		{"older epoch", 38, false},
		{"newer epoch", 40, true},
		{"unknown epoch", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			s.BecomePrimary(39, true, nil)
			ran := false
			if got := s.StepDown(tc.newer, func() { ran = true }); got != tc.down || ran != tc.down {
				t.Fatalf("StepDown(%d) = %v (effects ran: %v), want %v", tc.newer, got, ran, tc.down)
			}
			if s.IsPrimary() == tc.down {
				t.Fatalf("primary after StepDown(%d): %v", tc.newer, s.IsPrimary())
			}
			if want := max(uint64(39), tc.newer); s.Epoch() != want {
				t.Fatalf("epoch %d, want %d", s.Epoch(), want)
			}
		})
	}
}
