package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// ErrNoNewPair reports a demo that cannot add a pair (no Options.NewPair,
// or MaxPairs reached).
var ErrNoNewPair = errors.New("cannot add a pair")

// AddPairResult is what AddPair started.
type AddPairResult struct {
	Pair  string        `json:"pair"`
	Parts []PartState   `json:"parts"`
	Took  time.Duration `json:"took"`
}

// AddPair starts the next pair of cores (one more than the highest pair of
// the plan) in the running cluster: its two cores join the gossip, claim
// their own epoch, and the control planes start placing chats on them;
// nothing else restarts. Serialised with restarts.
func (s *Supervisor) AddPair(ctx context.Context) (AddPairResult, error) {
	s.restartMu.Lock()
	defer s.restartMu.Unlock()
	if s.opts.NewPair == nil {
		return AddPairResult{}, fmt.Errorf("%w: this demo was started without a pair template", ErrNoNewPair)
	}
	next := 1
	for _, p := range s.Plan().Parts {
		if n, err := strconv.Atoi(p.Pair); err == nil && n >= next {
			next = n + 1
		}
	}
	if next > MaxPairs {
		return AddPairResult{}, fmt.Errorf("%w: the demo runs at most %d pairs", ErrNoNewPair, MaxPairs)
	}
	parts, err := s.opts.NewPair(next)
	if err != nil {
		return AddPairResult{}, err
	}
	s.progressf("add pair %d (asked by hachat demo add-pair)\n", next)
	begin := time.Now()
	if err := s.AddParts(ctx, parts...); err != nil {
		return AddPairResult{}, err
	}
	res := AddPairResult{Pair: strconv.Itoa(next), Took: time.Since(begin)}
	for _, st := range s.Status() {
		for _, p := range parts {
			if st.Name == p.Name {
				res.Parts = append(res.Parts, st)
			}
		}
	}
	s.opts.Logger.Info("pair added", "pair", next, "took", res.Took.String())
	return res, nil
}

// handleAddPair serves POST /add-pair.
func (s *Supervisor) handleAddPair(w http.ResponseWriter, r *http.Request) {
	res, err := s.AddPair(r.Context())
	body := struct {
		AddPairResult
		Error string `json:"error,omitempty"`
	}{AddPairResult: res}
	status := http.StatusOK
	if err != nil {
		body.Error = err.Error()
		status = http.StatusInternalServerError
		if errors.Is(err, ErrNoNewPair) {
			status = http.StatusConflict
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// RequestAddPair asks the demo whose state file is statePath to add a pair
// and waits until its cores are ready (or ctx ends).
func RequestAddPair(ctx context.Context, statePath string) (AddPairResult, error) {
	st, err := ReadState(statePath)
	if err != nil {
		return AddPairResult{}, fmt.Errorf("%w: %w", ErrNoDemo, err)
	}
	if st.Supervisor <= 0 || !alive(st.Supervisor) || st.Control == "" {
		return AddPairResult{}, fmt.Errorf("%w: no running demo with a control socket behind %s", ErrNoDemo, statePath)
	}
	var body struct {
		AddPairResult
		Error string `json:"error"`
	}
	code, err := postControl(ctx, st, "/add-pair", &body)
	if err != nil {
		return AddPairResult{}, err
	}
	if body.Error != "" || code != http.StatusOK {
		if code == http.StatusConflict {
			return body.AddPairResult, fmt.Errorf("%w: %s", ErrNoNewPair, body.Error)
		}
		return body.AddPairResult, errors.New(body.Error)
	}
	return body.AddPairResult, nil
}
