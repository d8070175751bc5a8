package chatclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"time"
)

// PairsPath is the control plane's pairs endpoint (xds.PairsPath): GET
// answers every pair with its placement weight.
const PairsPath = "/xds/v1/pairs"

// pairsAnswer is the part of the control plane's GET PairsPath answer
// (xds.PairsStatus) that placement needs.
type pairsAnswer struct {
	Version string `json:"version"`
	Pairs   []struct {
		Name   string `json:"name"`
		Weight uint32 `json:"weight"`
	} `json:"pairs"`
}

// PairWeights keeps the placement weights the control plane publishes (the
// weighted_clusters of its placement route, also served on its admin API at
// PairsPath), polled from the first control plane of Admins that answers.
// The control plane stays the one that decides placement: a PairClient
// given Weights picks as Envoy and grpc-go pick from the route.
type PairWeights struct {
	admins []string // base URLs: https://host:port
	hc     *http.Client
	every  time.Duration
	log    *slog.Logger

	mu      sync.Mutex
	weights map[string]uint32
	version string
	cur     int // the control plane that answered last
}

// NewPairWeights polls the control planes at admins (base URLs) with hc
// every interval once Run runs.
func NewPairWeights(admins []string, hc *http.Client, every time.Duration, log *slog.Logger) (*PairWeights, error) {
	if len(admins) == 0 {
		return nil, errors.New("chatclient: no control plane to read the pair weights from")
	}
	if every <= 0 {
		return nil, fmt.Errorf("chatclient: pair weights poll interval %v must be positive", every)
	}
	if hc == nil {
		hc = &http.Client{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PairWeights{admins: admins, hc: hc, every: every, log: log.With("component", "chatclient")}, nil
}

// Weights returns the last weights read (nil before the first answer): a
// WeightsFunc.
func (w *PairWeights) Weights() map[string]uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.weights
}

// Run polls until ctx is done; a poll that fails on every control plane
// keeps the last weights (logged when the failures start and end).
func (w *PairWeights) Run(ctx context.Context) {
	t := time.NewTicker(w.every)
	defer t.Stop()
	failing := false // log a failure once, not every poll
	for {
		err := w.Poll(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			w.log.Warn("reading the pair weights failed, keeping the last", "err", err)
			failing = true
		case err == nil && failing:
			w.log.Info("reading the pair weights again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll reads the weights once, from the control plane that answered last,
// then from the others in order.
func (w *PairWeights) Poll(ctx context.Context) error {
	w.mu.Lock()
	start := w.cur
	w.mu.Unlock()
	var errs []error
	for i := range w.admins {
		idx := (start + i) % len(w.admins)
		ans, err := w.get(ctx, w.admins[idx])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ws := make(map[string]uint32, len(ans.Pairs))
		for _, p := range ans.Pairs {
			ws[p.Name] = p.Weight
		}
		w.mu.Lock()
		changed := !maps.Equal(ws, w.weights)
		w.weights, w.version, w.cur = ws, ans.Version, idx
		w.mu.Unlock()
		if changed {
			w.log.Info("pair weights", "version", ans.Version, "weights", ws, "from", w.admins[idx])
		}
		return nil
	}
	return errors.Join(errs...)
}

// get asks one control plane.
func (w *PairWeights) get(ctx context.Context, base string) (*pairsAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, w.every+time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+PairsPath, nil)
	if err != nil {
		return nil, fmt.Errorf("pair weights from %s: %w", base, err)
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pair weights from %s: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("pair weights from %s: %s", base, resp.Status)
	}
	var ans pairsAnswer
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return nil, fmt.Errorf("pair weights from %s: %w", base, err)
	}
	return &ans, nil
}
