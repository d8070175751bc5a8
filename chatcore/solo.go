package chatcore

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// soloMark is the second copy's UCS fallback's record at the coordination
// cluster: before the first acknowledgement whose second copy is in UCS
// (the backup away), the primary records, once per epoch, that it goes
// solo (see SoloRecorder); once a backup is in sync again it clears the
// mark. It owns its lock (mu, held across one write to the fencing
// authority) and the epoch it recorded, and reaches the core only through
// stepDown (a newer epoch at the coordination cluster). A fencer that
// cannot record it (rec nil: UCS holds the epochs) needs nothing: the new
// primary then merges from UCS.
type soloMark struct {
	rec             SoloRecorder // nil: nothing to record
	service, holder string
	timeout         time.Duration // of recording the mark
	gauge           prometheus.Gauge
	log             *slog.Logger
	stepDown        func(reason string, newer uint64)

	mu    sync.Mutex    // serializes recording and clearing
	epoch atomic.Uint64 // whose mark this primary recorded (0: none)
}

// newSoloMark builds the solo mark of a core fenced by f.
func newSoloMark(f Fencer, cfg Config, gauge prometheus.Gauge, log *slog.Logger, stepDown func(string, uint64)) *soloMark {
	rec, _ := f.(SoloRecorder)
	return &soloMark{rec: rec, service: cfg.Cluster, holder: cfg.Name, timeout: cfg.TranscriptSaveTimeout,
		gauge: gauge, log: log, stepDown: stepDown}
}

// mark records at the coordination cluster, once per epoch, that this
// primary acknowledges with second copies in UCS. A newer epoch there steps
// the core down (errNotPrimary); a failure to record refuses the second
// copy (UNAVAILABLE).
func (m *soloMark) mark(ctx context.Context, epoch uint64) error {
	if m.rec == nil || m.epoch.Load() == epoch {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.epoch.Load() == epoch {
		return nil
	}
	mctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	err := m.rec.MarkSolo(mctx, m.service, epoch, m.holder, true)
	switch {
	case err == nil:
		m.epoch.Store(epoch)
		m.gauge.Set(1)
		m.log.WarnContext(ctx, "backup away: acknowledging with second copies in UCS (recorded at the coordination cluster)", "epoch", epoch)
		return nil
	case errors.Is(err, ErrStaleEpoch):
		m.stepDown("the coordination cluster holds a newer epoch (recording solo mode)", storeEpoch(err))
		return errNotPrimary
	}
	m.log.WarnContext(ctx, "no second copy possible: backup away and the solo mark not recorded", "epoch", epoch, "err", err)
	return status.Error(codes.Unavailable, "no second copy possible (backup away, coordination cluster failing): retry")
}

// recorded notes that the mark of epoch was recorded with the claim of
// epoch (SoloClaimer), before this core became primary at it.
func (m *soloMark) recorded(epoch uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.epoch.Store(epoch)
	m.gauge.Set(1)
	m.log.Info("solo mark recorded with the claim: the first acknowledgements take their second copies in UCS until a backup is in sync", "epoch", epoch)
}

// clear clears this primary's solo mark once its backup is in sync again:
// every acknowledged event is then on the backup.
func (m *soloMark) clear(ctx context.Context) {
	if m.rec == nil || m.epoch.Load() == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	epoch := m.epoch.Load()
	if epoch == 0 {
		return
	}
	mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := m.rec.MarkSolo(mctx, m.service, epoch, m.holder, false); err != nil {
		m.log.WarnContext(ctx, "could not clear the solo mark (a failover will merge from UCS)", "epoch", epoch, "err", err)
		return
	}
	m.epoch.Store(0)
	m.gauge.Set(0)
}

// forget drops the mark's epoch on a step-down (a mark of an old epoch
// stays at the coordination cluster, keyed by its epoch). It takes no lock:
// it runs inside the role's transition, which mark may be waiting on.
func (m *soloMark) forget() {
	m.epoch.Store(0)
	m.gauge.Set(0)
}

// ucsCopy is the second copy's fallback while the backup is away (or does
// not hold the session yet): the solo mark first, then a save of the event
// in UCS through the saver's breaker (one view of UCS's health). It reaches
// the core only through stepDown (UCS holds a newer epoch) and isPrimary.
type ucsCopy struct {
	solo            *soloMark
	store           TranscriptStore
	cb              *gobreaker.CircuitBreaker[SaveResult]
	service, writer string
	timeout         time.Duration // of one save
	copies          prometheus.Counter
	log             *slog.Logger
	stepDown        func(reason string, newer uint64)
	isPrimary       func() bool
}

// copy makes UCS hold ev of chat chatID as its second copy. uncertain is
// the backup's word (ev was queued to it without an ack); on failure the
// answer reports whether ev may exist anyway (see Core.secondCopy).
func (u *ucsCopy) copy(ctx context.Context, chatID string, ev *chatpb.Event, uncertain bool) (bool, error) {
	if err := u.solo.mark(ctx, ev.Epoch); err != nil {
		return uncertain && u.isPrimary(), err
	}
	req := SaveRequest{Service: u.service, Epoch: ev.Epoch, Writer: u.writer, ChatID: chatID, Events: []*chatpb.Event{sessionlog.Saved(ev)}}
	sent := false
	_, err := u.cb.Execute(func() (SaveResult, error) {
		sent = true
		sctx, cancel := context.WithTimeout(ctx, u.timeout)
		defer cancel()
		return u.store.Save(sctx, req)
	})
	switch {
	case err == nil:
		u.copies.Inc()
		return false, nil
	case errors.Is(err, ErrStaleEpoch):
		u.stepDown("UCS rejected a second copy with a stale epoch", 0)
		return false, errNotPrimary
	case !sent, errors.Is(err, ErrConflict), errors.Is(err, ErrInvalid), errors.Is(err, ErrNonRecoverable), errors.Is(err, ErrForbidden):
		// UCS did not store it (or was not asked).
	default:
		uncertain = true // a timeout or a cut: the save may have landed
	}
	u.log.WarnContext(ctx, "no second copy possible: backup away and UCS failed", "session", chatID, "index", ev.Index, "uncertain", uncertain, "err", err)
	return uncertain, status.Error(codes.Unavailable, "no second copy possible (backup away, UCS failing): retry")
}
