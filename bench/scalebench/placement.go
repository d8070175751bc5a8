// Package scalebench is the measured model of hachat at scale (issue 10):
// many pairs of cores behind one control plane. It measures, with the real
// code, what the design's figures rest on: how balanced the control plane's
// placement keeps a million chats over a hundred pairs (the weights of
// xds.BuildPairs, recomputed every poll from the live sessions, picked from
// at random as Envoy and grpc-go pick weighted clusters), what losing one
// pair costs (its sessions, at the restore rate a real backup shows when it
// is promoted), and how big the control plane's snapshot is and how long it
// takes to reach a thousand sidecars over real ADS streams.
package scalebench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/hachat/hachat/xds"
)

// PlacementOptions shape the placement model.
type PlacementOptions struct {
	// Pairs is the number of pairs (default 100).
	Pairs int
	// Sessions is how many chats arrive in the ramp, none ending (default
	// 1,000,000): the live sessions grow from 0 to Sessions.
	Sessions int
	// Churn is how many more chats arrive after the ramp while as many end
	// (each end a live session picked uniformly at random: chats end
	// independently of their pair); default Sessions.
	Churn int
	// PerPoll is how many chats arrive per poll interval of the control
	// plane (default 500: 2,000 chats/s at the default 250 ms pair-poll).
	PerPoll int
	// Capacity is each pair's capacity (default xds.DefaultPairCapacity).
	Capacity uint64
	// Seed seeds the random picks (default 1).
	Seed uint64
}

func (o *PlacementOptions) defaults() {
	if o.Pairs <= 0 {
		o.Pairs = 100
	}
	if o.Sessions <= 0 {
		o.Sessions = 1_000_000
	}
	if o.Churn < 0 {
		o.Churn = 0
	} else if o.Churn == 0 {
		o.Churn = o.Sessions
	}
	if o.PerPoll <= 0 {
		o.PerPoll = 500
	}
	if o.Capacity == 0 {
		o.Capacity = xds.DefaultPairCapacity
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
}

// Balance is the spread of live sessions over the pairs at one moment.
type Balance struct {
	Live uint64  `json:"live"`
	Mean float64 `json:"mean"`
	Min  uint64  `json:"min"`
	Max  uint64  `json:"max"`
	// MaxOverMean is Max/Mean (1: perfectly even; 0 when nothing is live).
	MaxOverMean float64 `json:"max_over_mean"`
}

// balanceOf computes the spread of live.
func balanceOf(live []uint64) Balance {
	var b Balance
	if len(live) == 0 {
		return b
	}
	b.Min = live[0]
	for _, n := range live {
		b.Live += n
		b.Max = max(b.Max, n)
		b.Min = min(b.Min, n)
	}
	b.Mean = float64(b.Live) / float64(len(live))
	if b.Mean > 0 {
		b.MaxOverMean = float64(b.Max) / b.Mean
	}
	return b
}

// PlacementReport is what the placement model measured.
type PlacementReport struct {
	Pairs    int    `json:"pairs"`
	Arrivals int    `json:"arrivals"`
	Ends     int    `json:"ends"`
	PerPoll  int    `json:"arrivals_per_poll"`
	Polls    int    `json:"polls"`
	Capacity uint64 `json:"capacity"`
	// Rejected counts arrivals no pair had weight for (every pair full).
	Rejected int `json:"rejected"`
	// AfterRamp is the spread when the ramp's last chat arrived; AfterChurn
	// at the end of the churn.
	AfterRamp  Balance `json:"after_ramp"`
	AfterChurn Balance `json:"after_churn"`
	// WorstChurn is the largest max/mean seen at any poll of the churn.
	WorstChurn float64 `json:"worst_max_over_mean_churn"`
	// BuildMean and BuildMax are the times of one xds.BuildPairs call (all
	// resources of every pair, validated and versioned): what the control
	// plane spends per poll when a weight moved.
	BuildMean time.Duration `json:"build_mean_ns"`
	BuildMax  time.Duration `json:"build_max_ns"`
	Elapsed   time.Duration `json:"elapsed_ns"`
}

// ModelMembers returns the members of a cluster of n pairs, every pair
// whole: core-<p>a primary and core-<p>b backup, alive, epoch 1, on
// distinct addresses.
func ModelMembers(n int) []xds.Member {
	out := make([]xds.Member, 0, 2*n)
	for p := 1; p <= n; p++ {
		host := fmt.Sprintf("10.%d.%d.", p/250, p%250)
		out = append(out,
			xds.Member{Name: fmt.Sprintf("core-%da", p), Kind: xds.KindCore, Role: xds.RolePrimary, Epoch: 1,
				GRPCAddr: host + "1:7101", HTTPAddr: host + "1:7100", Pair: strconv.Itoa(p), State: xds.StateAlive},
			xds.Member{Name: fmt.Sprintf("core-%db", p), Kind: xds.KindCore, Role: xds.RoleBackup, Epoch: 1,
				GRPCAddr: host + "2:7101", HTTPAddr: host + "2:7100", Pair: strconv.Itoa(p), State: xds.StateAlive})
	}
	return out
}

// poller is the control plane's side of the model: it reads the pairs'
// live sessions once per poll interval, as xds.Server's pair poller does,
// and builds the resources (and so the weights) from them with the real
// xds.BuildPairs.
type poller struct {
	cfg      xds.Config
	members  []xds.Member
	capacity uint64
	names    []string
	prev     []uint64
	polled   bool
	arrivals float64
}

// smoothArrivals is the control plane's estimate of the chats arriving
// per poll interval, the arithmetic of xds.Server's pair poller: the growth
// of the pairs' live sessions since the last poll (the sum of the pairs
// that grew), counted at once when it rises and halving its distance when
// it falls.
func smoothArrivals(prevEstimate float64, before, now []uint64) float64 {
	var growth float64
	for i := range now {
		if i < len(before) && now[i] > before[i] {
			growth += float64(now[i] - before[i])
		}
	}
	return max(growth, (prevEstimate+growth)/2)
}

// weights polls live and returns each pair's placement weight, in pair
// order, and the time BuildPairs took.
func (p *poller) weights(live []uint64) ([]uint32, time.Duration, error) {
	if p.polled {
		p.arrivals = smoothArrivals(p.arrivals, p.prev, live)
	}
	p.polled = true
	p.prev = append(p.prev[:0], live...)
	in := xds.PairInputs{Live: make(map[string]uint64, len(live)), Capacity: p.capacity, Arrivals: uint64(p.arrivals + 0.5)}
	for i, n := range live {
		in.Live[p.names[i]] = n
	}
	start := time.Now()
	res, err := xds.BuildPairs(p.cfg, p.members, in)
	took := time.Since(start)
	if err != nil {
		return nil, took, fmt.Errorf("build the pairs' resources: %w", err)
	}
	if res.Pairs == nil && len(live) == 1 {
		// One pair: the resources of one pair, no placement route; every
		// chat goes to it, and the core refuses beyond its max-sessions.
		if live[0] >= p.capacity {
			return []uint32{0}, took, nil
		}
		return []uint32{1}, took, nil
	}
	if len(res.Pairs) != len(live) {
		return nil, took, fmt.Errorf("built %d pairs, want %d", len(res.Pairs), len(live))
	}
	w := make([]uint32, len(live))
	for _, pi := range res.Pairs {
		i, err := strconv.Atoi(pi.Name)
		if err != nil || i < 1 || i > len(w) {
			return nil, took, fmt.Errorf("unexpected pair %q in the built resources", pi.Name)
		}
		w[i-1] = pi.Weight
	}
	return w, took, nil
}

// weightedPick picks an index with probability weight/sum, as a weighted
// cluster pick does; -1 when every weight is 0.
func weightedPick(r *rand.Rand, cum []uint64) int {
	total := cum[len(cum)-1]
	if total == 0 {
		return -1
	}
	x := r.Uint64N(total)
	lo, hi := 0, len(cum)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if cum[mid] > x {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// livePick picks the pair of a live session chosen uniformly at random; -1
// when nothing is live.
func livePick(r *rand.Rand, live []uint64, total uint64) int {
	if total == 0 {
		return -1
	}
	x := r.Uint64N(total)
	for i, n := range live {
		if x < n {
			return i
		}
		x -= n
	}
	return len(live) - 1
}

// RunPlacement runs the placement model: Sessions arrivals, then Churn
// arrivals each with an end, PerPoll per poll interval; at the start of each
// interval the control plane reads the live sessions and rebuilds the
// weights (xds.BuildPairs), and the interval's arrivals are placed by a
// weighted pick on them, as a client picks on the weights it last got.
// progress gets a line every tenth of the work.
func RunPlacement(ctx context.Context, o PlacementOptions, progress io.Writer) (PlacementReport, error) {
	o.defaults()
	start := time.Now()
	cfg := xds.DefaultConfig()
	p := &poller{cfg: cfg, members: ModelMembers(o.Pairs), capacity: o.Capacity}
	for i := 1; i <= o.Pairs; i++ {
		p.names = append(p.names, strconv.Itoa(i))
	}
	rep := PlacementReport{Pairs: o.Pairs, PerPoll: o.PerPoll, Capacity: o.Capacity}
	r := rand.New(rand.NewPCG(o.Seed, 0x5ca1e))
	live := make([]uint64, o.Pairs)
	cum := make([]uint64, o.Pairs)
	var total uint64
	var builds time.Duration
	work := o.Sessions + o.Churn
	nextReport := work / 10
	for done := 0; done < work; {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		w, took, err := p.weights(live)
		if err != nil {
			return rep, err
		}
		rep.Polls++
		builds += took
		rep.BuildMax = max(rep.BuildMax, took)
		var sum uint64
		for i, x := range w {
			sum += uint64(x)
			cum[i] = sum
		}
		for range min(o.PerPoll, work-done) {
			churn := done >= o.Sessions
			if i := weightedPick(r, cum); i >= 0 {
				live[i]++
				total++
			} else {
				rep.Rejected++
			}
			rep.Arrivals++
			if churn {
				if i := livePick(r, live, total); i >= 0 {
					live[i]--
					total--
					rep.Ends++
				}
			}
			done++
			if done == o.Sessions {
				rep.AfterRamp = balanceOf(live)
			}
		}
		if done > o.Sessions {
			rep.WorstChurn = max(rep.WorstChurn, balanceOf(live).MaxOverMean)
		}
		if progress != nil && nextReport > 0 && done >= nextReport {
			b := balanceOf(live)
			fmt.Fprintf(progress, "placement: %d/%d arrivals, %d polls, live %d, max/mean %.3f\n", done, work, rep.Polls, b.Live, b.MaxOverMean)
			nextReport += work / 10
		}
	}
	rep.AfterChurn = balanceOf(live)
	if rep.Polls > 0 {
		rep.BuildMean = builds / time.Duration(rep.Polls)
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}
