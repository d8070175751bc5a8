package chaos

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/workload"
)

var testParts = []Part{
	{Name: "ucs-1", Kind: "ucs", Ports: []int{7080}},
	{Name: "ucs-2", Kind: "ucs", Ports: []int{7081}},
	{Name: "core-a", Kind: "core", Ports: []int{7101, 7102}},
	{Name: "core-b", Kind: "core", Ports: []int{7111, 7112}},
	{Name: "etcd-1", Kind: "etcd", Ports: []int{2379, 2380}},
	{Name: "webapi", Kind: "webapi", Ports: []int{8080}},
}

func draw(t *testing.T, seed uint64, kinds []Kind, n int) []Fault {
	t.Helper()
	s, err := NewSchedule(seed, kinds, testParts, DefaultTiming())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Fault, n)
	for i := range out {
		out[i] = s.Next()
	}
	return out
}

func TestScheduleIsReproducible(t *testing.T) {
	a, b := draw(t, 42, Kinds, 200), draw(t, 42, Kinds, 200)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed drew two different schedules")
	}
	if c := draw(t, 43, Kinds, 200); reflect.DeepEqual(a, c) {
		t.Fatal("seeds 42 and 43 drew the same schedule")
	}
	seen := map[Kind]int{}
	targets := map[string]bool{}
	tm := DefaultTiming()
	for i, f := range a {
		if f.Seq != i+1 {
			t.Fatalf("fault %d has seq %d", i+1, f.Seq)
		}
		seen[f.Kind]++
		for _, tg := range f.Targets {
			targets[tg] = true
		}
		if f.Gap < tm.GapMin || f.Gap >= tm.GapMax {
			t.Errorf("%s: gap %s outside %s..%s", f, f.Gap, tm.GapMin, tm.GapMax)
		}
		switch f.Kind {
		case UCS:
			if !slices.Equal(f.Targets, []string{"ucs-1", "ucs-2"}) {
				t.Errorf("%s: a ucs fault hits %v, want every ucs instance", f, f.Targets)
			}
		case Restart:
			if f.Hold != 0 {
				t.Errorf("%s: a restart has a hold", f)
			}
		default:
			if len(f.Targets) != 1 || f.Hold < tm.HoldMin || f.Hold >= tm.HoldMax {
				t.Errorf("%s: want one target and a hold in %s..%s", f, tm.HoldMin, tm.HoldMax)
			}
		}
	}
	for _, k := range Kinds {
		if seen[k] == 0 {
			t.Errorf("200 faults drew no %s", k)
		}
	}
	for _, p := range testParts {
		if !targets[p.Name] {
			t.Errorf("200 faults never hit %s (a part of a new kind is a target too)", p.Name)
		}
	}
}

func TestScheduleKindsAndTargets(t *testing.T) {
	for _, f := range draw(t, 1, []Kind{Stop}, 50) {
		if f.Kind != Stop {
			t.Fatalf("drew %s from [stop]", f)
		}
	}
	// No ucs part: the ucs kind is left out; nothing left is an error.
	noUCS := []Part{{Name: "core-a", Kind: "core", Ports: []int{1}}}
	s, err := NewSchedule(1, []Kind{UCS, Kill}, noUCS, DefaultTiming())
	if err != nil || !slices.Equal(s.Kinds(), []Kind{Kill}) {
		t.Fatalf("kinds = %v, %v; want [kill]", s.Kinds(), err)
	}
	if _, err := NewSchedule(1, []Kind{UCS}, noUCS, DefaultTiming()); !errors.Is(err, ErrBadFaults) {
		t.Fatalf("only ucs without a ucs part: %v, want ErrBadFaults", err)
	}
	if _, err := NewSchedule(1, Kinds, testParts, Timing{GapMin: 2, GapMax: 1}); err == nil {
		t.Fatal("a gap range upside down was accepted")
	}
}

func TestParseKinds(t *testing.T) {
	tests := []struct {
		in   string
		want []Kind
		bad  bool
	}{
		{"kill,stop,partition,ucs,restart", Kinds, false},
		{"all", Kinds, false},
		{" stop , kill,stop", []Kind{Stop, Kill}, false},
		{"kill,frobnicate", nil, true},
		{"", nil, true},
		{",", nil, true},
	}
	for _, tt := range tests {
		got, err := ParseKinds(tt.in)
		if tt.bad != (err != nil) || !slices.Equal(got, tt.want) {
			t.Errorf("ParseKinds(%q) = %v, %v", tt.in, got, err)
		}
		if tt.bad && !errors.Is(err, ErrBadFaults) {
			t.Errorf("ParseKinds(%q): %v is not ErrBadFaults", tt.in, err)
		}
	}
}

// history builds the synthetic record of one chat: customer messages 1..3
// acknowledged at indexes 3..5.
func history() ([]workload.Sent, []workload.ViewEvent) {
	var sent []workload.Sent
	var view []workload.ViewEvent
	for i := 1; i <= 3; i++ {
		m := workload.NewSent("c1", "customer", i)
		m.Acked, m.Index = true, uint64(i+2)
		sent = append(sent, *m)
		view = append(view, workload.ViewEvent{Index: m.Index, Type: "Message", Text: m.Text})
	}
	return sent, view
}

func TestCheckerFlagsViolations(t *testing.T) {
	sent, good := history()
	tests := []struct {
		name string
		view func([]workload.ViewEvent) []workload.ViewEvent
		want workload.ViolationKind
	}{
		{"lost", func(v []workload.ViewEvent) []workload.ViewEvent { return append(v[:1], v[2:]...) }, workload.Lost},
		{"duplicated", func(v []workload.ViewEvent) []workload.ViewEvent {
			return append(v, workload.ViewEvent{Index: 6, Type: "Message", Text: v[0].Text})
		}, workload.Duplicated},
		{"out of order", func(v []workload.ViewEvent) []workload.ViewEvent {
			v[0].Text, v[1].Text = v[1].Text, v[0].Text
			return v
		}, workload.OutOfOrder},
	}
	if errs := workload.CheckView(sent, good, false); len(errs) != 0 {
		t.Fatalf("a good history was flagged: %v", errs)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view := tt.view(slices.Clone(good))
			errs := workload.CheckView(sent, view, false)
			found := false
			for _, e := range errs {
				found = found || workload.KindOf(e) == tt.want
			}
			if !found {
				t.Fatalf("%s not flagged: %v", tt.want, errs)
			}
			// The report counts it and fails.
			r := &run{cfg: Config{Seed: 1}, start: time.Now(), sent: sent}
			rep := r.report(nil, []viewCheck{{chatID: "c1", view: "agent", errs: errs}}, Kinds)
			if rep.OK() || len(rep.Violations) != len(errs) {
				t.Fatalf("report OK=%v with violations %v", rep.OK(), rep.Violations)
			}
			counts := map[workload.ViolationKind]int{workload.Lost: rep.Lost, workload.Duplicated: rep.Duplicated, workload.OutOfOrder: rep.OutOfOrder}
			if counts[tt.want] == 0 {
				t.Fatalf("report counts no %s: %+v", tt.want, counts)
			}
		})
	}
}

func TestCheckPrimaries(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := func(sec int, core, role string, epoch uint64) RoleSample {
		return RoleSample{At: t0.Add(time.Duration(sec) * time.Second), Core: core, Role: role, Epoch: epoch}
	}
	clean := []RoleSample{s(0, "core-a", "primary", 1), s(0, "core-b", "backup", 1), s(5, "core-b", "primary", 2),
		s(6, "core-a", "backup", 2), s(9, "core-a", "primary", 3)}
	if v := CheckPrimaries(clean); len(v) != 0 {
		t.Fatalf("clean history flagged: %v", v)
	}
	if f := Failovers(clean); len(f) != 2 || f[0].To != "core-b" || f[0].Epoch != 2 || f[1].To != "core-a" {
		t.Fatalf("failovers = %+v", f)
	}
	bad := append(slices.Clone(clean), s(7, "core-a", "primary", 2))
	v := CheckPrimaries(bad)
	if len(v) != 1 || v[0].Epoch != 2 || !slices.Equal(v[0].Cores, []string{"core-a", "core-b"}) {
		t.Fatalf("two primaries in epoch 2: got %v", v)
	}
	r := &run{cfg: Config{Seed: 1}, start: t0}
	if rep := r.report(bad, nil, Kinds); rep.OK() || rep.TwoPrimaries != 1 {
		t.Fatalf("report OK=%v TwoPrimaries=%d", rep.OK(), rep.TwoPrimaries)
	}
}

func TestParseStatusAndMetrics(t *testing.T) {
	s, err := ParseStatus([]byte(`{"name":"core-a","role":"primary","epoch":"7","liveSessions":"2"}`))
	if err != nil || s.Role != "primary" || s.Epoch != 7 {
		t.Fatalf("ParseStatus = %+v, %v", s, err)
	}
	if _, err := ParseStatus([]byte(`{"role":"primary","epoch":"x"}`)); err == nil {
		t.Fatal("a bad epoch parsed")
	}
	m, ok := ParseRoleMetrics("# HELP x\nhachat_core_role{role=\"backup\"} 0\nhachat_core_role{role=\"primary\"} 1\nhachat_core_epoch 7\n")
	if !ok || m.Role != "primary" || m.Epoch != 7 {
		t.Fatalf("ParseRoleMetrics = %+v %v", m, ok)
	}
	if _, ok := ParseRoleMetrics("hachat_core_epoch 7\n"); ok {
		t.Fatal("metrics without a role parsed")
	}
}

func TestSummarizeWorstPause(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	applied := []Applied{
		{Fault: Fault{Kind: Kill}, Start: at(10), End: at(12)},
		{Fault: Fault{Kind: Stop}, Start: at(30), End: at(31), Err: "SIGCONT: no such process"},
	}
	sent := []workload.Sent{
		{At: at(9), AckedAt: at(13.5), Acked: true},  // overlaps the kill: 4.5s
		{At: at(16), AckedAt: at(16.1), Acked: true}, // within 5s after the kill's repair: 100ms
		{At: at(20), AckedAt: at(21), Acked: true},   // outside every fault
		{At: at(30.5), AckedAt: at(32), Acked: true}, // the stop: 1.5s
		{At: at(30.6)}, // never acknowledged, during the stop
	}
	got := Summarize(applied, sent, []Kind{Kill, Stop, UCS})
	want := []KindSummary{
		{Kind: Kill, Count: 1, WorstPause: 4500 * time.Millisecond},
		{Kind: Stop, Count: 1, Failed: 1, WorstPause: 1500 * time.Millisecond, NotAcked: 1},
		{Kind: UCS},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Summarize =\n%+v\nwant\n%+v", got, want)
	}
	if b := baseline(applied, sent); b != time.Second {
		t.Fatalf("baseline = %s, want 1s (the one send outside faults)", b)
	}
}

func TestPlotIsValidSVGWithShadedFaults(t *testing.T) {
	t0 := time.Unix(1000, 0)
	rep := &Report{Seed: 9, Started: t0, Took: time.Minute}
	for i, k := range Kinds {
		rep.Faults = append(rep.Faults, Applied{Fault: Fault{Seq: i + 1, Kind: k, Targets: []string{"core-a"}},
			Start: t0.Add(time.Duration(i*10) * time.Second), End: t0.Add(time.Duration(i*10+3) * time.Second)})
	}
	rep.Faults = append(rep.Faults, Applied{Fault: Fault{Seq: 6, Kind: Kill, Targets: []string{"<core & b>"}}, Start: t0.Add(55 * time.Second), End: t0.Add(56 * time.Second)})
	for i := range 100 {
		rep.Points = append(rep.Points, Point{At: time.Duration(i) * 500 * time.Millisecond, Latency: time.Duration(i+1) * time.Millisecond, Side: "customer", Acked: i%10 != 0})
	}
	var b bytes.Buffer
	if err := rep.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML whose root is an svg element.
	dec := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	root := ""
	rects := map[string]int{}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			for _, a := range se.Attr {
				if a.Name.Local == "class" && se.Name.Local == "rect" && strings.HasPrefix(a.Value, "fault ") {
					rects[strings.TrimPrefix(a.Value, "fault fault-")]++
				}
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	for _, k := range Kinds {
		want := 1
		if k == Kill {
			want = 2
		}
		if rects[string(k)] != want {
			t.Errorf("%d shaded %s intervals, want %d", rects[string(k)], k, want)
		}
	}
	if n := strings.Count(b.String(), `class="lost"`); n != 10 {
		t.Errorf("%d not-acknowledged marks, want 10", n)
	}
}

func TestPartitionRules(t *testing.T) {
	chain := ChainName(1234)
	if chain != "HACHAT-CHAOS-1234" || len(chain) > 28 {
		t.Fatalf("chain %q (iptables allows 28 characters)", chain)
	}
	got := PartitionRules(chain, []int{7101})
	want := [][]string{
		{"-A", chain, "-p", "tcp", "--dport", "7101", "-j", "DROP"},
		{"-A", chain, "-p", "tcp", "--sport", "7101", "-j", "DROP"},
		{"-A", chain, "-p", "udp", "--dport", "7101", "-j", "DROP"},
		{"-A", chain, "-p", "udp", "--sport", "7101", "-j", "DROP"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("PartitionRules =\n%v\nwant\n%v", got, want)
	}
	// The firewall creates its chain and jump, cuts, heals, and removes
	// both exactly once.
	var ran []string
	fw := &Firewall{Chain: chain, run: func(_ context.Context, args ...string) error {
		ran = append(ran, strings.Join(args, " "))
		return nil
	}}
	ctx := context.Background()
	if err := fw.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	_ = fw.Cut(ctx, []int{80, 81})
	_ = fw.Heal(ctx)
	_ = fw.Close(ctx)
	_ = fw.Close(ctx)
	wantRan := []string{
		"-N " + chain, "-I INPUT 1 -i lo -j " + chain,
		"-A " + chain + " -p tcp --dport 80 -j DROP", "-A " + chain + " -p tcp --sport 80 -j DROP",
		"-A " + chain + " -p udp --dport 80 -j DROP", "-A " + chain + " -p udp --sport 80 -j DROP",
		"-A " + chain + " -p tcp --dport 81 -j DROP", "-A " + chain + " -p tcp --sport 81 -j DROP",
		"-A " + chain + " -p udp --dport 81 -j DROP", "-A " + chain + " -p udp --sport 81 -j DROP",
		"-F " + chain,
		"-D INPUT -i lo -j " + chain, "-F " + chain, "-X " + chain,
	}
	if !slices.Equal(ran, wantRan) {
		t.Fatalf("ran\n%s\nwant\n%s", strings.Join(ran, "\n"), strings.Join(wantRan, "\n"))
	}
	// A setup that fails half-way removes what it made.
	ran = nil
	fw = &Firewall{Chain: chain, run: func(_ context.Context, args ...string) error {
		ran = append(ran, strings.Join(args, " "))
		if args[0] == "-I" {
			return errors.New("no INPUT chain")
		}
		return nil
	}}
	if err := fw.Setup(ctx); err == nil {
		t.Fatal("a failed setup returned nil")
	}
	if !slices.Contains(ran, "-X "+chain) {
		t.Fatalf("a failed setup left the chain: %v", ran)
	}
}

func TestSocketPorts(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1BBD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1BBD 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
`
	got := socketPorts(strings.NewReader(table), map[string]bool{"111": true, "222": true})
	if !slices.Equal(got, []int{7101, 40000}) {
		t.Fatalf("socketPorts = %v, want [7101 40000]", got)
	}
}

func TestParseState(t *testing.T) {
	st, err := ParseState([]byte(`{"parts":[
		{"name":"core-a","kind":"core","pid":10,"http":"127.0.0.1:7102","grpc":"127.0.0.1:7101","state":"running","log":"/x/core-a.log"},
		{"name":"etcd-1","kind":"etcd","pid":11,"client":"http://127.0.0.1:2379","peer":"127.0.0.1:2380","state":"running"},
		{"name":"webapi-2","kind":"webapi","pid":12,"http":"127.0.0.1:8082","state":"running"}],
		"entrypoints":{"customer":"http://127.0.0.1:9000/","agent":"http://127.0.0.1:9001"},
		"credentials":{"accounts":[{"user":"ada","password":"p","role":"agent"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := st.Part("etcd-1"); !slices.Equal(p.Ports, []int{2379, 2380}) || p.Kind != "etcd" {
		t.Fatalf("etcd-1 = %+v: a new kind's ports come from any host:port field", p)
	}
	if p, _ := st.Part("core-a"); !slices.Equal(p.Ports, []int{7101, 7102}) || p.URL() != "http://127.0.0.1:7102" {
		t.Fatalf("core-a = %+v", p)
	}
	if st.CustomerURL() != "http://127.0.0.1:9000" || st.AgentURL() != "http://127.0.0.1:9001" {
		t.Fatalf("entrypoints: %q %q", st.CustomerURL(), st.AgentURL())
	}
	st.Entrypoints.Customer, st.Entrypoints.Agent = "", ""
	if st.CustomerURL() != "http://127.0.0.1:8082" || st.AgentURL() != "" {
		t.Fatalf("without entrypoints: %q %q", st.CustomerURL(), st.AgentURL())
	}
	if _, err := ParseState([]byte(`{"parts":`)); err == nil {
		t.Fatal("a truncated state file parsed")
	}
}

func TestLogPromotions(t *testing.T) {
	log := `=== hachat demo: starting core-b at 2026-12-06T14:21:55Z
time=2026-12-06T14:00:00.000Z level=INFO msg="claimed epoch, now primary" part=core core=core-b epoch=1 previous=0
time=2026-12-06T14:22:00.100Z level=INFO msg="member joined" epoch=1
time=2026-12-06T14:22:10.500Z level=WARN msg="primary lost: promoting" primary=core-a
time=2026-12-06T14:22:11.000Z level=INFO msg="promotion complete" epoch=2 sessions_restored=4 took=300ms
{"time":"2026-12-06T14:23:00Z","level":"INFO","msg":"promotion complete","epoch":4}
`
	since := time.Date(2026, 12, 6, 14, 21, 0, 0, time.UTC)
	got := LogPromotions("core-b", strings.NewReader(log), since)
	if len(got) != 2 || got[0].Epoch != 2 || got[1].Epoch != 4 || got[0].Core != "core-b" || got[0].Role != "primary" {
		t.Fatalf("LogPromotions = %+v (the claim before since is an earlier run's)", got)
	}
	// With the other core's log claiming epoch 2 as well, the check fails.
	other := LogPromotions("core-a", strings.NewReader(`time=2026-12-06T14:22:12Z level=INFO msg="claimed epoch, now primary" core=core-a epoch=2`), since)
	if v := CheckPrimaries(append(got, other...)); len(v) != 1 || v[0].Epoch != 2 {
		t.Fatalf("two cores claiming epoch 2 in their logs: %v", v)
	}
}

func TestDeskViewKeepsEachChatsProblems(t *testing.T) {
	d := newDesk(nil, "", "ada", "")
	d.record(`{"chatId":"A","index":5,"kind":"Message","text":"x"}`)
	d.record(`{"chatId":"A","index":5,"kind":"Notice","text":""}`)
	d.record(`{"chatId":"B","index":2,"kind":"Message","text":"b2"}`)
	d.record(`{"chatId":"B","index":1,"kind":"ParticipantJoined"}`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	v, err := d.view(ctx, "B", 2)
	if err != nil || len(v) != 2 || v[0].Index != 1 || v[1].Text != "b2" {
		t.Fatalf("view of B = %+v, %v: chat A's problem must not spoil it", v, err)
	}
	if _, err := d.view(ctx, "A", 5); workload.KindOf(err) != workload.Conflict {
		t.Fatalf("view of A: %v, want a conflict", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := d.view(short, "B", 3); err == nil {
		t.Fatal("a view waiting for an index that never comes returned")
	}
}
