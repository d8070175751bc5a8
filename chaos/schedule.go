package chaos

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Kind is a kind of fault.
type Kind string

// The kinds of faults.
const (
	// Kill is kill -9 of one part, restarted after the hold.
	Kill Kind = "kill"
	// Stop is SIGSTOP of one part, SIGCONT after the hold.
	Stop Kind = "stop"
	// Partition drops every packet to and from one part's ports (iptables
	// on the loopback interface) for the hold.
	Partition Kind = "partition"
	// UCS is kill -9 of every ucs instance, all restarted after the hold.
	UCS Kind = "ucs"
	// Restart is a graceful restart of one part (SIGTERM, start again).
	Restart Kind = "restart"
)

// Kinds lists every kind of fault in report order.
var Kinds = []Kind{Kill, Stop, Partition, UCS, Restart}

// ErrBadFaults is wrapped by ParseKinds for an unknown or empty list.
var ErrBadFaults = errors.New("bad fault list")

// ParseKinds parses a comma-separated list of fault kinds ("all" for every
// kind).
func ParseKinds(s string) ([]Kind, error) {
	if strings.TrimSpace(s) == "all" {
		return slices.Clone(Kinds), nil
	}
	var out []Kind
	for _, f := range strings.Split(s, ",") {
		k := Kind(strings.TrimSpace(f))
		if k == "" {
			continue
		}
		if !slices.Contains(Kinds, k) {
			return nil, fmt.Errorf("%w: unknown fault %q (known: kill, stop, partition, ucs, restart)", ErrBadFaults, k)
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no fault named", ErrBadFaults)
	}
	return out, nil
}

// Timing bounds the random intervals of a schedule.
type Timing struct {
	// GapMin and GapMax bound the quiet time before each fault.
	GapMin, GapMax time.Duration
	// HoldMin and HoldMax bound how long a fault lasts (a killed part stays
	// down, a stopped one stopped, a partition up).
	HoldMin, HoldMax time.Duration
}

// DefaultTiming suits a run of minutes: a fault every 4 to 12 s, each held
// 1 to 6 s.
func DefaultTiming() Timing {
	return Timing{GapMin: 3 * time.Second, GapMax: 8 * time.Second, HoldMin: time.Second, HoldMax: 6 * time.Second}
}

// Fault is one planned fault.
type Fault struct {
	// Seq numbers the faults from 1.
	Seq  int  `json:"seq"`
	Kind Kind `json:"kind"`
	// Targets are the parts it hits (one, or every ucs instance).
	Targets []string `json:"targets"`
	// Gap is the quiet time before it, Hold how long it lasts.
	Gap  time.Duration `json:"gap_ns"`
	Hold time.Duration `json:"hold_ns"`
}

func (f Fault) String() string {
	return fmt.Sprintf("#%d %s %s for %s", f.Seq, f.Kind, strings.Join(f.Targets, ","), f.Hold.Round(100*time.Millisecond))
}

// Schedule draws faults from a seeded random source: the same seed, kinds,
// parts and timing give the same faults in the same order.
type Schedule struct {
	rng    *rand.Rand
	kinds  []Kind
	parts  []Part
	timing Timing
	seq    int
}

// NewSchedule returns the schedule of seed over parts (in state-file order).
// A kind with no possible target (ucs without a ucs part) is left out; it is
// an error when no kind is left.
func NewSchedule(seed uint64, kinds []Kind, parts []Part, timing Timing) (*Schedule, error) {
	if timing.GapMax < timing.GapMin || timing.HoldMax < timing.HoldMin || timing.HoldMin < 0 || timing.GapMin < 0 {
		return nil, fmt.Errorf("bad timing: gap %s..%s, hold %s..%s", timing.GapMin, timing.GapMax, timing.HoldMin, timing.HoldMax)
	}
	s := &Schedule{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), parts: parts, timing: timing}
	for _, k := range kinds {
		if len(s.candidates(k)) > 0 {
			s.kinds = append(s.kinds, k)
		}
	}
	if len(s.kinds) == 0 {
		return nil, fmt.Errorf("%w: no part to fault with %v", ErrBadFaults, kinds)
	}
	return s, nil
}

// Kinds returns the kinds the schedule draws from.
func (s *Schedule) Kinds() []Kind { return slices.Clone(s.kinds) }

// candidates are the parts a fault of kind k may hit, by name.
func (s *Schedule) candidates(k Kind) []string {
	var out []string
	for _, p := range s.parts {
		if k == UCS && p.Kind != "ucs" {
			continue
		}
		if k == Partition && len(p.Ports) == 0 {
			continue
		}
		out = append(out, p.Name)
	}
	return out
}

// Next draws the next fault.
func (s *Schedule) Next() Fault {
	s.seq++
	k := s.kinds[s.rng.IntN(len(s.kinds))]
	f := Fault{Seq: s.seq, Kind: k, Gap: s.between(s.timing.GapMin, s.timing.GapMax), Hold: s.between(s.timing.HoldMin, s.timing.HoldMax)}
	c := s.candidates(k)
	if k == UCS {
		f.Targets = c
	} else {
		f.Targets = []string{c[s.rng.IntN(len(c))]}
	}
	if k == Restart {
		f.Hold = 0 // a restart lasts as long as the part takes to come back
	}
	return f
}

func (s *Schedule) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}
