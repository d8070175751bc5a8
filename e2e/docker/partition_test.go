//go:build docker

package docker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// The partition test's load and clocks (issue 12): six chats, customer and
// agent each sending every 0.3 s, every core's /status polled every 100 ms.
const (
	partitionChats    = 6
	partitionInterval = 300 * time.Millisecond
	statusEvery       = 100 * time.Millisecond
	// statusTimeout bounds one /status call: a core cut off from the
	// network does not answer at all, and the next sample is due.
	statusTimeout = 250 * time.Millisecond
	// ackedPerPhase is how many acknowledgements the load must add before
	// the cut, and again once the cluster has settled after the heal,
	// before it stops: five messages per side.
	ackedPerPhase = 2 * partitionChats * 5
	// shortCut is the cut of the default run (make test-docker): the
	// isolated core decides the other is gone within about 2 s, so 8 s
	// already shows what 15 s shows. fullCut is the scenario, the
	// cut of every run when HACHAT_PARTITION_RUNS asks for repetitions.
	shortCut = 8 * time.Second
	fullCut  = 15 * time.Second
	// settleTimeout bounds each wait after the heal (the old primary's
	// step-down, the pair formed again, the load's last phase).
	settleTimeout = 30 * time.Second
	// epochService is the cluster name the cores claim epochs for at UCS
	// (chatcore's default --cluster).
	epochService = "hachat"
)

// coreHTTP is each core's /status address in deploy/compose.yaml, after the
// subnet's three octets. The cluster network is a bridge of this machine,
// so the test process reaches it directly.
var coreHTTP = map[string]string{"core-a": ".11:7102", "core-b": ".12:7112"}

// partitionCase is one scenario of TestPartition.
type partitionCase struct {
	name string
	// cut is the core whose container leaves the cluster network: core-a
	// (the primary at start) or core-b (its backup).
	cut string
	// failover says what must happen. true: the backup takes over during
	// the cut, and the old primary steps down after the heal and rejoins as
	// the new primary's backup. false: the primary keeps its role and epoch
	// throughout, the cut-off backup never reports primary nor claims an
	// epoch, and it rejoins as backup.
	failover bool
}

// partitionResult is what one run measured, for the summary of all runs.
type partitionResult struct {
	passed                 bool
	sent, acked, duringCut int
	resends                int
	longestPause           time.Duration
	promoted, steppedDown  time.Duration // from the cut, from the heal; -1: not seen
	dualPrimary            time.Duration // how long both cores' last answers said primary
	settled                time.Duration // from the heal to the pair formed again; -1: not seen
	took                   time.Duration
}

// TestPartition is the container test of issue 12: a chat core's container
// is cut off from the cluster network (docker network disconnect) while six
// chats run at full speed, and connected again at its own address after the
// cut. Two scenarios, each on fresh clusters:
//
//   - backup isolated: the primary keeps serving, keeps its role and epoch,
//     and the backup that was cut off from everyone rejoins as backup (it
//     must not depose the healthy primary with a stale decision);
//   - primary isolated: the backup promotes at a newer epoch, and the old
//     primary steps down after the heal and rejoins as backup.
//
// In both, the workload checker then proves nothing acknowledged was lost,
// shown twice or out of order, and that no index holds two different events,
// across the customer's refresh view, the customer's and the agent's push
// channels and the UCS transcript. Every core's /status is sampled every
// 100 ms throughout; a failed run logs that timeline and the cores' role
// log lines.
//
// By default each scenario runs once with an 8 s cut. HACHAT_PARTITION_RUNS=n
// runs each n times in a row with the 15 s cut;
// HACHAT_PARTITION_CUT=<duration> sets the cut either way.
func TestPartition(t *testing.T) {
	requireDocker(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	runs, cut, err := partitionPlan(os.Getenv("HACHAT_PARTITION_RUNS"), os.Getenv("HACHAT_PARTITION_CUT"))
	if err != nil {
		t.Fatal(err)
	}
	img := image(t, root)
	for _, tc := range []partitionCase{
		{name: "backup isolated", cut: "core-b", failover: false},
		{name: "primary isolated", cut: "core-a", failover: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			results := make([]partitionResult, 0, runs)
			for i := 1; i <= runs; i++ {
				var res partitionResult
				t.Run(fmt.Sprintf("run %d of %d", i, runs), func(t *testing.T) {
					res = partition(t, root, img, tc, cut)
					res.passed = !t.Failed()
				})
				results = append(results, res)
			}
			t.Logf("%s: %d runs with a %v cut in %v\n%s", tc.name, runs, cut, time.Since(start).Round(time.Second), summarize(results))
		})
	}
}

// partitionPlan reads HACHAT_PARTITION_RUNS and HACHAT_PARTITION_CUT: one
// run with shortCut when neither is set, n runs with fullCut when runs is,
// and the cut given when cut is.
func partitionPlan(runsEnv, cutEnv string) (runs int, cut time.Duration, err error) {
	runs, cut = 1, shortCut
	if runsEnv != "" {
		if runs, err = strconv.Atoi(runsEnv); err != nil || runs < 1 {
			return 0, 0, fmt.Errorf("HACHAT_PARTITION_RUNS=%q: want a positive number of runs", runsEnv)
		}
		cut = fullCut
	}
	if cutEnv != "" {
		if cut, err = time.ParseDuration(cutEnv); err != nil || cut <= 0 {
			return 0, 0, fmt.Errorf("HACHAT_PARTITION_CUT=%q: want a positive duration such as 15s", cutEnv)
		}
	}
	return runs, cut, nil
}

// partition is one run of a scenario on a new cluster.
func partition(t *testing.T, root, img string, tc partitionCase, cut time.Duration) partitionResult {
	res := partitionResult{promoted: -1, steppedDown: -1, settled: -1}
	testStart := time.Now()
	p := startProject(t, root, img)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	gms := &harness.GMS{Base: p.WebAPI, Service: p.Service, HTTP: &http.Client{Timeout: 10 * time.Second}}
	agents := &harness.AgentAPI{Base: p.Interaction, HTTP: &http.Client{Timeout: 10 * time.Second}, Accounts: composeAccounts}
	ucs := p.ucsClient(t)

	// The /status timeline runs from now to the end of the load. On failure
	// it is logged with the cores' role log lines, before startProject's
	// cleanup dumps the logs and takes the project down.
	sw := watchStatus(p)
	defer sw.stop()
	marks := map[string]time.Time{}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		sw.stop()
		t.Logf("/status timeline (every change of a core's answer; time from the first sample, UTC as in the logs):\n%s", sw.timeline(marks))
		lctx, lcancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer lcancel()
		for _, s := range []string{"core-a", "core-b", "webapi", "sidecar-webapi", "sidecar-interaction"} {
			t.Logf("%s, role and routing log lines:\n%s", s, p.logLines(lctx, s, roleWords))
		}
	})

	// 1. The pair is formed and both client APIs answer.
	primary, backup := "core-a", "core-b"
	waitFor(t, ctx, "core-a primary with backup core-b", 60*time.Second, func() error {
		if dead, err := p.exited(ctx); err == nil && len(dead) > 0 {
			return fmt.Errorf("%w: containers exited: %v", errFatal, dead)
		}
		return pairFormed(sw.latest(), primary, backup)
	})
	epoch := epochOf(sw.latest(), primary)
	for _, u := range []string{p.WebAPI + "/healthz", p.Interaction + "/healthz"} {
		waitFor(t, ctx, u, 30*time.Second, func() error { return healthy(ctx, u) })
	}
	// The compose accounts' two agents hold three chats each (max-chats-per-agent).
	sessions := harness.StartSessions(t, gms, agents, []string{"ada", "grace"}, partitionChats)
	acks := &ackClock{}
	for _, s := range sessions {
		for i, side := range s.Sides {
			s.Sides[i] = acks.wrap(side)
		}
	}

	// 2. Load, then the cut: the container leaves the cluster network for
	// exactly cut (the fault's length, not a wait for anything).
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load := harness.StartWorkload(lctx, sessions, harness.WorkloadOptions{Messages: 1 << 20, Interval: partitionInterval, RetryFor: settleTimeout})
	defer func() { // a run that stops early leaves no sender behind
		stopLoad()
		load.Wait()
	}()
	waitFor(t, ctx, "the load before the cut", 30*time.Second, func() error { return ackedAtLeast(load, ackedPerPhase) })
	// The cut and the heal are the moments docker's commands returned; on
	// a busy machine they take a while (logged), and the fault is at least
	// cut long.
	cmdStart := time.Now()
	addr, err := p.isolate(ctx, tc.cut)
	if err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	marks["cut "+tc.cut] = cutAt
	t.Logf("cut %s (%s) off the cluster network after %d acknowledgements (docker network disconnect took %v); %s primary at epoch %d",
		tc.cut, addr, load.Acked(), cutAt.Sub(cmdStart).Round(time.Millisecond), primary, epoch)
	if tc.failover {
		err := until(ctx, "core-b primary at a newer epoch during the cut", cut, func() error {
			return promotedSince(sw.latest(), "core-b", epoch)
		})
		if err != nil {
			t.Errorf("the backup did not take over while the primary was cut off: %v", err)
		} else if at, ok := sw.first(cutAt, func(s statusSample) bool { return s.is("core-b", "primary") && s.State.Epoch > epoch }); ok {
			res.promoted = at.Sub(cutAt)
			marks["core-b promoted"] = at
		}
	}
	select {
	case <-ctx.Done():
		t.Fatalf("during the cut: %v", ctx.Err())
	case <-time.After(time.Until(cutAt.Add(cut))):
	}
	cmdStart = time.Now()
	if err := p.rejoin(ctx, tc.cut, addr); err != nil {
		t.Fatal(err)
	}
	healAt := time.Now()
	marks["heal "+tc.cut] = healAt
	res.duringCut = acks.between(cutAt, healAt)
	t.Logf("connected %s again at %s after %v (docker network connect took %v); %d acknowledgements during the cut",
		tc.cut, addr, healAt.Sub(cutAt).Round(time.Millisecond), healAt.Sub(cmdStart).Round(time.Millisecond), res.duringCut)

	// 3. The cluster settles: with a failover, the old primary steps down
	// and rejoins as the new primary's backup; without, the cut-off backup
	// rejoins as backup of the primary it had.
	if tc.failover {
		primary, backup = "core-b", "core-a"
		err := until(ctx, "core-a stepped down after the heal", settleTimeout, func() error {
			return hasRole(sw.latest(), "core-a", "backup")
		})
		if err != nil {
			t.Errorf("the old primary did not step down: %v", err)
		} else if at, ok := sw.first(healAt, func(s statusSample) bool { return s.is("core-a", "backup") }); ok {
			res.steppedDown = at.Sub(healAt)
			marks["core-a stepped down"] = at
		}
	}
	err = until(ctx, primary+" primary with backup "+backup+" after the heal", settleTimeout, func() error {
		sts := sw.latest()
		if !tc.failover && promotedSince(sts, backup, epoch) == nil {
			return fmt.Errorf("%w: %s, the core that was cut off, reports primary", errFatal, backup)
		}
		return pairFormed(sts, primary, backup)
	})
	if err != nil {
		t.Errorf("after the heal: %v", err)
	} else {
		res.settled = time.Since(healAt)
		marks["pair formed"] = time.Now()
	}
	target := load.Acked() + ackedPerPhase
	if err := until(ctx, "the load after the heal", settleTimeout, func() error { return ackedAtLeast(load, target) }); err != nil {
		t.Errorf("the chats did not go on after the heal: %v", err)
	}
	stopLoad()
	rec := load.Wait()
	sw.stop()
	marks["load stopped"] = time.Now()

	// 4. What the clients saw, what the cores said, what UCS holds.
	res.sent, res.acked = len(rec.Sent), rec.Acked()
	for _, m := range rec.Sent {
		res.resends += m.Attempts - 1
	}
	res.longestPause = acks.longestGap()
	res.dualPrimary = bothPrimary(sw.samples())
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: ucs, MinAcked: 2 * ackedPerPhase})
	for _, err := range checkRoles(sw.samples(), tc, epoch, cutAt, healAt) {
		t.Error(err)
	}
	if err := checkEpochAtUCS(ctx, ucs, tc, epoch); err != nil {
		t.Error(err)
	}
	res.took = time.Since(testStart)
	t.Logf("%s: %d sent, %d acknowledged (%d during the cut), %d resends, longest pause %v; %s; run took %v",
		tc.name, res.sent, res.acked, res.duringCut, res.resends, res.longestPause.Round(time.Millisecond),
		res.timings(), res.took.Round(time.Second))
	return res
}

// roleWords select the log lines that tell a partition's story: role and
// epoch changes, membership verdicts, replication links, sidecar moves.
var roleWords = []string{"promot", "epoch", "stepped down", "primary", "backup connected", "in sync",
	"member failed", "member joined", "suspect", "past the end", "upstream", "unhealthy", "healthy"}

// checkRoles checks the /status timeline against the scenario: without a
// failover, the primary answered primary at its first epoch every time it
// answered, and the cut-off backup never answered primary; with one, two
// cores never answered primary at one epoch, and core-b never answered
// primary at the old epoch.
func checkRoles(samples []statusSample, tc partitionCase, epoch uint64, cutAt, healAt time.Time) []error {
	var errs []error
	first := map[string]bool{}
	report := func(core string, s statusSample, what string) {
		if first[core+what] {
			return // one report per core and kind: the timeline has the rest
		}
		first[core+what] = true
		errs = append(errs, fmt.Errorf("%s %s at epoch %d, %s", core, what, s.State.Epoch, since(s.At, cutAt, healAt)))
	}
	lastPrimary := map[string]statusSample{}
	for _, s := range samples {
		if s.State == nil {
			continue
		}
		if !tc.failover {
			switch {
			case s.Core == "core-a" && s.State.Role != "primary":
				report("core-a", s, "(the healthy primary) answered "+s.State.Role)
			case s.Core == "core-a" && s.State.Epoch != epoch:
				report("core-a", s, "(the healthy primary) changed epoch")
			case s.Core == "core-b" && s.State.Role == "primary":
				report("core-b", s, "(the cut-off backup) answered primary")
			}
			continue
		}
		if s.is("core-b", "primary") && s.State.Epoch <= epoch {
			report("core-b", s, "answered primary without a newer epoch")
		}
		if s.State.Role != "primary" {
			delete(lastPrimary, s.Core)
			continue
		}
		lastPrimary[s.Core] = s
		for core, o := range lastPrimary {
			if core != s.Core && o.State.Epoch == s.State.Epoch && s.At.Sub(o.At) <= 2*statusEvery {
				report(s.Core, s, "answered primary at the same epoch as "+core)
			}
		}
	}
	return errs
}

// checkEpochAtUCS checks the fencing epoch UCS holds at the end: without a
// failover, still the primary's first one (no claim was made, not even one
// the /status samples missed); with one, a newer epoch held by core-b.
func checkEpochAtUCS(ctx context.Context, ucs *ucsmock.Client, tc partitionCase, epoch uint64) error {
	e, err := ucs.Epoch(ctx, epochService)
	if err != nil {
		return fmt.Errorf("read the epoch at UCS: %w", err)
	}
	switch {
	case !tc.failover && (e.Epoch != epoch || e.Holder != "core-a"):
		return fmt.Errorf("UCS holds epoch %d of %s, want %d of core-a: an epoch was claimed although the primary was healthy", e.Epoch, e.Holder, epoch)
	case tc.failover && (e.Epoch <= epoch || e.Holder != "core-b"):
		return fmt.Errorf("UCS holds epoch %d of %s, want a newer one than %d held by core-b", e.Epoch, e.Holder, epoch)
	}
	return nil
}

// bothPrimary returns how long, over the samples in time order, the last
// answers of both cores said primary (at whatever epochs; a core that does
// not answer counts as no primary).
func bothPrimary(samples []statusSample) time.Duration {
	role := map[string]string{}
	var total time.Duration
	var since time.Time
	for _, s := range samples {
		role[s.Core] = "" // no answer: whatever it believes, it serves nobody
		if s.State != nil {
			role[s.Core] = s.State.Role
		}
		both := role["core-a"] == "primary" && role["core-b"] == "primary"
		switch {
		case both && since.IsZero():
			since = s.At
		case !both && !since.IsZero():
			total += s.At.Sub(since)
			since = time.Time{}
		}
	}
	if !since.IsZero() { // still both at the last sample
		total += samples[len(samples)-1].At.Sub(since)
	}
	return total
}

// since says when t was, relative to the cut and the heal.
func since(t, cutAt, healAt time.Time) string {
	switch {
	case t.Before(cutAt):
		return fmt.Sprintf("%v before the cut", cutAt.Sub(t).Round(time.Millisecond))
	case t.Before(healAt):
		return fmt.Sprintf("%v into the cut", t.Sub(cutAt).Round(time.Millisecond))
	}
	return fmt.Sprintf("%v after the heal", t.Sub(healAt).Round(time.Millisecond))
}

// timings describes the run's role changes as measured from /status.
func (r partitionResult) timings() string {
	d := func(v time.Duration) string {
		if v < 0 {
			return "not seen"
		}
		return v.Round(time.Millisecond).String()
	}
	s := "pair formed " + d(r.settled) + " after the heal"
	if r.promoted >= 0 || r.steppedDown >= 0 {
		s = fmt.Sprintf("promoted %s after the cut, stepped down %s after the heal, %s", d(r.promoted), d(r.steppedDown), s)
	}
	return s + fmt.Sprintf(", both answered primary for %v", r.dualPrimary.Round(time.Millisecond))
}

// summarize renders one line per run and the ranges over all runs.
func summarize(results []partitionResult) string {
	var b strings.Builder
	passed := 0
	var minAck, maxAck int
	var maxPause time.Duration
	for i, r := range results {
		verdict := "FAIL"
		if r.passed {
			verdict = "ok"
			passed++
		}
		fmt.Fprintf(&b, "  run %d %s: %d acknowledged of %d sent (%d during the cut), %d resends, longest pause %v, %s\n",
			i+1, verdict, r.acked, r.sent, r.duringCut, r.resends, r.longestPause.Round(time.Millisecond), r.timings())
		if i == 0 || r.acked < minAck {
			minAck = r.acked
		}
		maxAck = max(maxAck, r.acked)
		maxPause = max(maxPause, r.longestPause)
	}
	fmt.Fprintf(&b, "  %d of %d runs passed; %d-%d acknowledged per run; longest pause %v",
		passed, len(results), minAck, maxAck, maxPause.Round(time.Millisecond))
	return b.String()
}

// ackedAtLeast reports nil once the load has n acknowledgements.
func ackedAtLeast(w *harness.Workload, n int) error {
	if got := w.Acked(); got < n {
		return fmt.Errorf("%d of %d acknowledged", got, n)
	}
	return nil
}

// healthy reports nil when GET url answers 200.
func healthy(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}

// hasRole reports nil when core answers with role.
func hasRole(sts []coreStatus, core, role string) error {
	for _, s := range sts {
		if s.Status != nil && s.Status.Name == core {
			if s.Status.Role == role {
				return nil
			}
			return fmt.Errorf("%s is %s at epoch %d", core, s.Status.Role, s.Status.Epoch)
		}
	}
	return fmt.Errorf("%s does not answer", core)
}

// promotedSince reports nil when core answers primary at an epoch newer
// than epoch.
func promotedSince(sts []coreStatus, core string, epoch uint64) error {
	if err := hasRole(sts, core, "primary"); err != nil {
		return err
	}
	if e := epochOf(sts, core); e <= epoch {
		return fmt.Errorf("%s is primary at epoch %d, not newer than %d", core, e, epoch)
	}
	return nil
}

// network is the project's cluster network, as docker-compose names it.
func (p *project) network() string { return p.name + "_hachat" }

// isolate disconnects service's container from the cluster network and
// returns the address it had there, for rejoin.
func (p *project) isolate(ctx context.Context, service string) (string, error) {
	id, err := p.container(ctx, service)
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "docker", "inspect", "-f",
		fmt.Sprintf(`{{with index .NetworkSettings.Networks %q}}{{.IPAddress}}{{end}}`, p.network()), id).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("address of %s: %w: %s", service, err, out)
	}
	addr := strings.TrimSpace(string(out))
	if addr == "" {
		return "", fmt.Errorf("%s is not on network %s", service, p.network())
	}
	if out, err := exec.CommandContext(ctx, "docker", "network", "disconnect", p.network(), id).CombinedOutput(); err != nil {
		return "", fmt.Errorf("docker network disconnect %s: %w: %s", service, err, out)
	}
	return addr, nil
}

// rejoin connects service's container to the cluster network again at addr.
func (p *project) rejoin(ctx context.Context, service, addr string) error {
	id, err := p.container(ctx, service)
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "docker", "network", "connect", "--ip", addr, p.network(), id).CombinedOutput(); err != nil {
		return fmt.Errorf("docker network connect --ip %s %s: %w: %s", addr, service, err, out)
	}
	return nil
}

// logLines returns the lines of service's log that contain one of words
// (case-insensitive), at most the last 60.
func (p *project) logLines(ctx context.Context, service string, words []string) string {
	id, err := p.container(ctx, service)
	if err != nil {
		return err.Error()
	}
	out, err := exec.CommandContext(ctx, "docker", "logs", id).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("docker logs %s: %v", service, err)
	}
	var keep []string
	for _, line := range strings.Split(string(out), "\n") {
		l := strings.ToLower(line)
		for _, w := range words {
			if strings.Contains(l, w) {
				keep = append(keep, line)
				break
			}
		}
	}
	return lastLines(strings.Join(keep, "\n"), 60)
}

// statusSample is one /status call to one core.
type statusSample struct {
	At    time.Time
	Core  string     // the service polled
	State *coreState // nil when the core did not answer
	Err   string
}

// is reports whether the sample is core answering role.
func (s statusSample) is(core, role string) bool {
	return s.Core == core && s.State != nil && s.State.Role == role
}

// statusWatch polls every core's /status every statusEvery and keeps every
// answer and every failure: the role timeline of a run.
type statusWatch struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	all  []statusSample
	last map[string]statusSample
}

// watchStatus starts polling the cores of p.
func watchStatus(p *project) *statusWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &statusWatch{cancel: cancel, last: map[string]statusSample{}}
	// A new connection per call: an answer proves the core reachable now.
	client := &http.Client{Timeout: statusTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	for core, addr := range coreHTTP {
		url := "http://" + p.Subnet + addr + "/status"
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			tick := time.NewTicker(statusEvery)
			defer tick.Stop()
			for {
				w.add(sample(ctx, client, core, url))
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	return w
}

// sample calls one core's /status.
func sample(ctx context.Context, client *http.Client, core, url string) statusSample {
	s := statusSample{At: time.Now(), Core: core}
	st, err := fetchStatus(ctx, client, url)
	if err != nil {
		s.Err = err.Error()
		return s
	}
	s.State = &coreState{Name: st.GetName(), Role: st.GetRole(), Epoch: st.GetEpoch(), Backup: st.GetBackup(),
		Lag: st.GetReplicationLag(), Live: st.GetLiveSessions(), Draining: st.GetDraining()}
	return s
}

// fetchStatus GETs a core's /status (chatpb.StatusResponse as protojson).
func fetchStatus(ctx context.Context, client *http.Client, url string) (*chatpb.StatusResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("status: read: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: HTTP %d: %.200s", resp.StatusCode, b)
	}
	st := &chatpb.StatusResponse{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return st, nil
}

func (w *statusWatch) add(s statusSample) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all = append(w.all, s)
	w.last[s.Core] = s
}

// stop ends the polling (it may be called more than once).
func (w *statusWatch) stop() {
	w.cancel()
	w.wg.Wait()
}

// latest returns each core's last sample in the shape of `hachat ctl
// status`, for pairFormed and friends.
func (w *statusWatch) latest() []coreStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []coreStatus
	for _, core := range []string{"core-a", "core-b"} {
		s, ok := w.last[core]
		if !ok {
			out = append(out, coreStatus{Addr: core, Error: "no sample yet"})
			continue
		}
		out = append(out, coreStatus{Addr: core, Error: s.Err, Status: s.State})
	}
	return out
}

// samples returns every sample so far, in the order they were taken (a
// call that timed out is recorded late, at the time it started).
func (w *statusWatch) samples() []statusSample {
	w.mu.Lock()
	all := slices.Clone(w.all)
	w.mu.Unlock()
	slices.SortStableFunc(all, func(a, b statusSample) int { return a.At.Compare(b.At) })
	return all
}

// first returns the time of the first sample taken at or after from that
// matches.
func (w *statusWatch) first(from time.Time, match func(statusSample) bool) (time.Time, bool) {
	for _, s := range w.samples() {
		if !s.At.Before(from) && match(s) {
			return s.At, true
		}
	}
	return time.Time{}, false
}

// timeline renders every change of a core's answer (role, epoch, backup,
// or answering at all) with the run's marks, in time order.
func (w *statusWatch) timeline(marks map[string]time.Time) string {
	all := w.samples()
	if len(all) == 0 {
		return "  (no samples)"
	}
	start := all[0].At
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	for what, at := range marks {
		lines = append(lines, line{at, "---- " + what})
	}
	prev := map[string]string{}
	count := map[string]int{}
	for _, s := range all {
		state := "no answer (" + s.Err + ")"
		if s.State != nil {
			state = fmt.Sprintf("%s epoch %d backup %q lag %d live %d", s.State.Role, s.State.Epoch, s.State.Backup, s.State.Lag, s.State.Live)
			if s.State.Draining {
				state += " draining"
			}
		}
		count[s.Core]++
		if s.State == nil && strings.HasPrefix(prev[s.Core], "no answer") {
			continue // one line per outage, whatever the error text
		}
		if prev[s.Core] == state {
			continue
		}
		prev[s.Core] = state
		lines = append(lines, line{s.At, s.Core + ": " + state})
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.at.Compare(b.at) })
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "  %+8.3fs %s %s\n", l.at.Sub(start).Seconds(), l.at.UTC().Format("15:04:05.000"), l.text)
	}
	fmt.Fprintf(&b, "  samples: core-a %d, core-b %d", count["core-a"], count["core-b"])
	return b.String()
}
