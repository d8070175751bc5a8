package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RoleSample is one reading of a core's role and epoch.
type RoleSample struct {
	At     time.Time `json:"at"`
	Core   string    `json:"core"`
	Role   string    `json:"role"`
	Epoch  uint64    `json:"epoch"`
	Source string    `json:"source"` // "status" or "metrics"
}

// Failover is a change of primary seen by the samples.
type Failover struct {
	At       time.Time `json:"at"`
	From, To string
	Epoch    uint64 `json:"epoch"`
}

// monitor samples every core's /status and /metrics.
type monitor struct {
	hc      *http.Client
	every   time.Duration
	mu      sync.Mutex
	samples []RoleSample
}

func (m *monitor) run(ctx context.Context, cores func() []Part) {
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		for _, c := range cores() {
			if c.HTTP == "" {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
			if s, ok := m.status(sctx, c); ok {
				m.add(s)
			}
			if s, ok := m.metrics(sctx, c); ok {
				m.add(s)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *monitor) add(s RoleSample) {
	m.mu.Lock()
	m.samples = append(m.samples, s)
	m.mu.Unlock()
}

func (m *monitor) get(ctx context.Context, url string) ([]byte, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, false
	}
	resp, err := m.hc.Do(req)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return b, err == nil && resp.StatusCode == http.StatusOK
}

func (m *monitor) status(ctx context.Context, c Part) (RoleSample, bool) {
	at := time.Now()
	b, ok := m.get(ctx, c.URL()+"/status")
	if !ok {
		return RoleSample{}, false
	}
	s, err := ParseStatus(b)
	if err != nil {
		return RoleSample{}, false
	}
	s.At, s.Core, s.Source = at, c.Name, "status"
	return s, true
}

func (m *monitor) metrics(ctx context.Context, c Part) (RoleSample, bool) {
	at := time.Now()
	b, ok := m.get(ctx, c.URL()+"/metrics")
	if !ok {
		return RoleSample{}, false
	}
	s, ok := ParseRoleMetrics(string(b))
	s.At, s.Core, s.Source = at, c.Name, "metrics"
	return s, ok
}

// ParseStatus reads role and epoch from a core's /status (protojson: the
// epoch is a string).
func ParseStatus(b []byte) (RoleSample, error) {
	var st struct {
		Role  string          `json:"role"`
		Epoch json.RawMessage `json:"epoch"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return RoleSample{}, fmt.Errorf("parse status: %w", err)
	}
	e, err := strconv.ParseUint(strings.Trim(string(st.Epoch), `"`), 10, 64)
	if err != nil && len(st.Epoch) > 0 {
		return RoleSample{}, fmt.Errorf("parse status epoch %s: %w", st.Epoch, err)
	}
	return RoleSample{Role: st.Role, Epoch: e}, nil
}

// ParseRoleMetrics reads hachat_core_role{role=...} and hachat_core_epoch
// from a core's Prometheus exposition.
func ParseRoleMetrics(text string) (RoleSample, bool) {
	var s RoleSample
	var haveRole, haveEpoch bool
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "hachat_core_role{"):
			f := strings.Fields(line)
			if len(f) == 2 && f[1] == "1" {
				if i := strings.Index(f[0], `role="`); i >= 0 {
					r := f[0][i+6:]
					s.Role, haveRole = r[:strings.IndexByte(r, '"')], true
				}
			}
		case strings.HasPrefix(line, "hachat_core_epoch "):
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, "hachat_core_epoch ")), 64)
			if err == nil {
				s.Epoch, haveEpoch = uint64(v), true
			}
		}
	}
	return s, haveRole && haveEpoch
}

// Samples returns the samples taken so far.
func (m *monitor) Samples() []RoleSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]RoleSample(nil), m.samples...)
}

// PrimaryViolation is an epoch in which two cores said they were primary.
type PrimaryViolation struct {
	Epoch uint64   `json:"epoch"`
	Cores []string `json:"cores"`
}

func (v PrimaryViolation) String() string {
	return fmt.Sprintf("epoch %d had two primaries: %s", v.Epoch, strings.Join(v.Cores, ", "))
}

// CheckPrimaries proves at most one primary per epoch: no two cores ever
// reported role primary with the same epoch.
func CheckPrimaries(samples []RoleSample) []PrimaryViolation {
	by := map[uint64]map[string]bool{}
	for _, s := range samples {
		if s.Role != "primary" {
			continue
		}
		if by[s.Epoch] == nil {
			by[s.Epoch] = map[string]bool{}
		}
		by[s.Epoch][s.Core] = true
	}
	var out []PrimaryViolation
	for e, cores := range by {
		if len(cores) < 2 {
			continue
		}
		v := PrimaryViolation{Epoch: e}
		for c := range cores {
			v.Cores = append(v.Cores, c)
		}
		sort.Strings(v.Cores)
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Epoch < out[j].Epoch })
	return out
}

// Failovers lists the changes of primary (core or epoch) in the samples,
// in time order.
func Failovers(samples []RoleSample) []Failover {
	ss := append([]RoleSample(nil), samples...)
	sort.SliceStable(ss, func(i, j int) bool { return ss[i].At.Before(ss[j].At) })
	var out []Failover
	var cur string
	var epoch uint64
	for _, s := range ss {
		if s.Role != "primary" || s.Epoch < epoch || (s.Core == cur && s.Epoch == epoch) {
			continue
		}
		if cur != "" {
			out = append(out, Failover{At: s.At, From: cur, To: s.Core, Epoch: s.Epoch})
		}
		cur, epoch = s.Core, s.Epoch
	}
	return out
}

// LogPromotions reads a core's log (text or JSON) and returns one sample
// (role primary, the epoch, at the line's time when it has one) for each
// line in which the core took an epoch as primary ("claimed epoch, now
// primary", "promotion complete") at or after since (a log file outlives
// runs): the log's own evidence for CheckPrimaries, beside the sampled
// /status and /metrics.
func LogPromotions(core string, r io.Reader, since time.Time) []RoleSample {
	var out []RoleSample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "claimed epoch, now primary") && !strings.Contains(line, "promotion complete") {
			continue
		}
		s := RoleSample{Core: core, Role: "primary", Source: "log"}
		var j struct {
			Time  time.Time `json:"time"`
			Epoch uint64    `json:"epoch"`
		}
		if json.Unmarshal([]byte(line), &j) == nil {
			s.At, s.Epoch = j.Time, j.Epoch
			if !s.At.Before(since) {
				out = append(out, s)
			}
			continue
		}
		for _, f := range strings.Fields(line) {
			switch {
			case strings.HasPrefix(f, "time="):
				s.At, _ = time.Parse(time.RFC3339Nano, strings.TrimPrefix(f, "time="))
			case strings.HasPrefix(f, "epoch="):
				s.Epoch, _ = strconv.ParseUint(strings.TrimPrefix(f, "epoch="), 10, 64)
			}
		}
		if s.Epoch > 0 && !s.At.Before(since) {
			out = append(out, s)
		}
	}
	return out
}
