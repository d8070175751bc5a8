package demo

import (
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestPlanValidate(t *testing.T) {
	ok := Part{Name: "core-a", Kind: KindCore, HTTP: "127.0.0.1:7102", GRPC: "127.0.0.1:7101"}
	tests := []struct {
		name  string
		parts []Part
		want  string // substring of the error; "" means valid
	}{
		{"valid", []Part{ok}, ""},
		{"empty", nil, "no parts"},
		{"no name", []Part{{Kind: KindCore}}, "no name"},
		{"duplicate", []Part{ok, ok}, "twice"},
		{"unknown kind", []Part{{Name: "x", Kind: "mainframe"}}, "unknown kind"},
		{"bad address", []Part{{Name: "x", Kind: KindUCS, HTTP: "7080"}}, "address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Plan{Parts: tt.parts}.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrBadPlan) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrBadPlan with %q", err, tt.want)
			}
		})
	}
}

func TestPlanWithCopies(t *testing.T) {
	p := Plan{Parts: []Part{{Name: "a", Kind: KindCore, Args: []string{"--x=1"}}, {Name: "b", Kind: KindUCS}}}
	q := p.With("a", "--y=2").WithKind(KindUCS, "--z=3")
	if got := q.Parts[0].Args; !slices.Equal(got, []string{"--x=1", "--y=2"}) {
		t.Fatalf("With: %v", got)
	}
	if got := q.Parts[1].Args; !slices.Equal(got, []string{"--z=3"}) {
		t.Fatalf("WithKind: %v", got)
	}
	if got := p.Parts[0].Args; !slices.Equal(got, []string{"--x=1"}) {
		t.Fatalf("With changed the original: %v", got)
	}
	if r := q.Without("a"); len(r.Parts) != 1 || r.Parts[0].Name != "b" {
		t.Fatalf("Without: %+v", r.Parts)
	}
	if c := q.Parts[0].Command(); c[0] != "core" || len(c) != 3 {
		t.Fatalf("Command: %v", c)
	}
}

func TestStandardPlanStages(t *testing.T) {
	tests := []struct {
		stage Stage
		names []string
	}{
		{StageSingle, []string{"ucs", "core-a", "webapi", "interaction"}},
		{StagePair, []string{"ucs", "witness", "core-a", "core-b", "webapi", "interaction"}},
		{StageMesh, []string{"ucs", "core-a", "core-b", "xds", "xds-b", "sidecar-webapi", "sidecar-webapi-2", "sidecar-interaction", "webapi", "webapi-2", "interaction", "edge"}},
	}
	for _, tt := range tests {
		plan := StandardPlan(Layout{Addrs: DefaultAddrs(), Stage: tt.stage})
		var names []string
		for _, p := range plan.Parts {
			names = append(names, p.Name)
		}
		if !slices.Equal(names, tt.names) {
			t.Errorf("stage %d: parts %v, want %v", tt.stage, names, tt.names)
		}
		if err := plan.Validate(); err != nil {
			t.Errorf("stage %d: %v", tt.stage, err)
		}
		a, _ := plan.Part("core-a")
		for _, opt := range HARecommended() {
			if !slices.Contains(a.Args, opt) {
				t.Errorf("stage %d: core-a lacks %s: %v", tt.stage, opt, a.Args)
			}
		}
		if a.Role != "primary" || a.HTTP != "127.0.0.1:7102" || a.GRPC != "127.0.0.1:7101" {
			t.Errorf("stage %d: core-a %+v", tt.stage, a)
		}
	}
	mesh := StandardPlan(Layout{Addrs: DefaultAddrs(), Stage: StageMesh})
	w, _ := mesh.Part("webapi")
	if !slices.Contains(w.Args, "--core=127.0.0.1:7301") {
		t.Errorf("mesh webapi should reach the core through its sidecar: %v", w.Args)
	}
	// The edge holds the customers' and agents' addresses; the instances
	// register in the gossip cluster under their own names.
	want := Entrypoints{Customer: "http://127.0.0.1:8080", Agent: "http://127.0.0.1:8081"}
	if mesh.Entrypoints != want {
		t.Errorf("entrypoints %+v, want %+v", mesh.Entrypoints, want)
	}
	e, _ := mesh.Part("edge")
	for _, arg := range []string{"--ingress", "--listen=127.0.0.1:8080", "--agent-listen=127.0.0.1:8081"} {
		if e.Kind != KindProxy || !slices.Contains(e.Args, arg) {
			t.Errorf("edge lacks %s: %+v", arg, e)
		}
	}
	for name, gossip := range map[string]string{"webapi": "webapi", "webapi-2": "webapi-2", "interaction": "interaction"} {
		p, _ := mesh.Part(name)
		if !slices.Contains(p.Args, "--gossip-name="+gossip) || p.HTTP == "127.0.0.1:8080" || p.HTTP == "127.0.0.1:8081" {
			t.Errorf("%s: %+v", name, p)
		}
	}
	x, _ := mesh.Part("xds")
	if !slices.Contains(x.Args, "--ingress-customer=127.0.0.1:8080") || !slices.Contains(x.Args, "--ingress-agent=127.0.0.1:8081") {
		t.Errorf("xds does not publish the ingress: %v", x.Args)
	}
	if single := StandardPlan(Layout{Addrs: DefaultAddrs()}); single.Entrypoints != want {
		t.Errorf("single stage entrypoints %+v, want the instances' %+v", single.Entrypoints, want)
	}
	// Issue 8: both control planes are given to every sidecar, which keeps
	// its last configuration in the data dir; no core names one fixed
	// witness that a dead control plane would silence.
	for _, name := range []string{"sidecar-webapi", "sidecar-webapi-2", "sidecar-interaction", "edge"} {
		sc, _ := mesh.Part(name)
		if !slices.Contains(sc.Args, "--xds=127.0.0.1:7200,127.0.0.1:7220") ||
			!slices.Contains(sc.Args, "--xds-cache="+XDSCacheFile(".hachat", name)) {
			t.Errorf("%s: %v: want both control planes and its cache file", name, sc.Args)
		}
	}
	for _, name := range []string{"xds", "xds-b"} {
		if x, ok := mesh.Part(name); !ok || x.Kind != KindXDS {
			t.Errorf("%s: %+v, want a part of kind xds", name, x)
		}
	}
	for _, name := range []string{"core-a", "core-b"} {
		c, _ := mesh.Part(name)
		for _, arg := range c.Args {
			if strings.HasPrefix(arg, "--witness=") {
				t.Errorf("%s: %s: with two control planes the witness comes from membership", name, arg)
			}
			if strings.HasPrefix(arg, "--gossip-join=") && !strings.Contains(arg, "127.0.0.1:7223") {
				t.Errorf("%s: %s does not join xds-b", name, arg)
			}
		}
	}
}

func TestFreeAddrsDistinctLoopback(t *testing.T) {
	free, err := FreeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range map[string]Addrs{"free": free, "default": DefaultAddrs()} {
		t.Run(name, func(t *testing.T) { distinctLoopback(t, a) })
	}
}

// distinctLoopback fails unless every part of the fullest plan (stage 4
// with the coordination members) listens on its own loopback address.
func distinctLoopback(t *testing.T, a Addrs) {
	t.Helper()
	plan := StandardPlan(Layout{Addrs: a, Stage: StageMesh, CoordMembers: 3})
	seen := map[string]string{}
	for _, p := range plan.Parts {
		for _, addr := range []string{p.HTTP, p.GRPC} {
			if addr == "" {
				continue
			}
			if !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Fatalf("%s: %s not loopback", p.Name, addr)
			}
			if other, dup := seen[addr]; dup {
				t.Fatalf("%s and %s share %s", p.Name, other, addr)
			}
			seen[addr] = p.Name
		}
	}
}

func TestStandardPlanUCSReaderToken(t *testing.T) {
	plan := StandardPlan(Layout{Addrs: DefaultAddrs(), Stage: StageMesh, UCSReaderToken: "rd"})
	u, _ := plan.Part("ucs")
	if !slices.Contains(u.Args, "--reader-token=rd") {
		t.Errorf("ucs args lack the reader token: %v", u.Args)
	}
	def := StandardPlan(Layout{Addrs: DefaultAddrs()})
	u, _ = def.Part("ucs")
	if !slices.Contains(u.Args, "--reader-token=demo-ucs-reader-token") {
		t.Errorf("ucs args lack the default reader token: %v", u.Args)
	}
	if got := (Layout{}).Filled().UCSReaderToken; got != "demo-ucs-reader-token" {
		t.Errorf("Filled().UCSReaderToken = %q", got)
	}
}

// TestStandardPlanCoordination: with CoordMembers the paired stages start
// the coordination members (kind coord) before the cores, every member
// names all of them, and every core takes its epochs from all of them;
// with Coordination the cores use that etcd and no member starts; the
// single-core stage has none.
func TestStandardPlanCoordination(t *testing.T) {
	clients := "--coordination=127.0.0.1:7401,127.0.0.1:7411,127.0.0.1:7421"
	tests := []struct {
		name     string
		layout   Layout
		members  []string
		coreFlag string // "" : no --coordination
	}{
		{"mesh, three members", Layout{Stage: StageMesh, CoordMembers: 3}, []string{"etcd-1", "etcd-2", "etcd-3"}, clients},
		{"pair, three members", Layout{Stage: StagePair, CoordMembers: 3}, []string{"etcd-1", "etcd-2", "etcd-3"}, clients},
		{"existing etcd", Layout{Stage: StageMesh, CoordMembers: 3, Coordination: "10.0.0.1:2379"}, nil, "--coordination=10.0.0.1:2379"},
		{"single core", Layout{Stage: StageSingle, CoordMembers: 3}, nil, ""},
		{"none", Layout{Stage: StageMesh}, nil, ""},
		{"members' data elsewhere", Layout{Stage: StageMesh, CoordMembers: 3, CoordDataDir: "/fast"}, []string{"etcd-1", "etcd-2", "etcd-3"}, clients},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.layout.Addrs = DefaultAddrs()
			plan := StandardPlan(tt.layout)
			if err := plan.Validate(); err != nil {
				t.Fatal(err)
			}
			var members []string
			firstCore := -1
			for i, p := range plan.Parts {
				if p.Kind == KindCoord {
					members = append(members, p.Name)
					if firstCore >= 0 {
						t.Errorf("%s starts after a core", p.Name)
					}
					if !slices.Contains(p.Args, "--initial-cluster=etcd-1=127.0.0.1:7402,etcd-2=127.0.0.1:7412,etcd-3=127.0.0.1:7422") {
						t.Errorf("%s: %v", p.Name, p.Args)
					}
					dataDir := tt.layout.CoordDataDir
					if dataDir == "" {
						dataDir = tt.layout.Filled().DataDir
					}
					if want := "--data-dir=" + filepath.Join(dataDir, p.Name+".etcd"); !slices.Contains(p.Args, want) {
						t.Errorf("%s: args %v, want %s", p.Name, p.Args, want)
					}
				}
				if p.Kind == KindCore {
					if firstCore < 0 {
						firstCore = i
					}
					has := slices.ContainsFunc(p.Args, func(a string) bool { return strings.HasPrefix(a, "--coordination=") })
					if tt.coreFlag == "" && has || tt.coreFlag != "" && !slices.Contains(p.Args, tt.coreFlag) {
						t.Errorf("%s: args %v, want %q", p.Name, p.Args, tt.coreFlag)
					}
				}
			}
			if !slices.Equal(members, tt.members) {
				t.Errorf("members %v, want %v", members, tt.members)
			}
		})
	}
}

// TestStandardPlanUCSStore: by default one ucs on its bbolt file; with
// UCSStore postgres two ucs parts (ucs, ucs-2) on the given database, and
// every core is given both, in that order, with the cluster's scheme.
func TestStandardPlanUCSStore(t *testing.T) {
	for _, tc := range []struct {
		name      string
		layout    Layout
		ucs       []string
		coreUCS   string
		storeArgs []string
	}{
		{"bbolt", Layout{Addrs: DefaultAddrs(), Stage: StagePair, DataDir: "d"},
			[]string{"ucs"}, "--ucs=http://127.0.0.1:7080", []string{"--db=d/ucs.db"}},
		{"postgres", Layout{Addrs: DefaultAddrs(), Stage: StagePair, UCSStore: "postgres", UCSPostgres: "host=/s dbname=ucs"},
			[]string{"ucs", "ucs-2"}, "--ucs=http://127.0.0.1:7080,http://127.0.0.1:7081", []string{"--store=postgres", "--postgres=host=/s dbname=ucs"}},
		{"postgres mtls", Layout{Addrs: DefaultAddrs(), Stage: StageMesh, UCSStore: "postgres", UCSPostgres: "x", CertDir: "c"},
			[]string{"ucs", "ucs-2"}, "--ucs=https://127.0.0.1:7080,https://127.0.0.1:7081", []string{"--store=postgres", "--postgres=x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := StandardPlan(tc.layout)
			var ucs []string
			for _, p := range plan.Parts {
				if p.Kind == KindUCS {
					ucs = append(ucs, p.Name)
					for _, a := range tc.storeArgs {
						if !slices.Contains(p.Args, a) {
							t.Errorf("%s args lack %s: %v", p.Name, a, p.Args)
						}
					}
				}
				if p.Kind == KindCore && !slices.Contains(p.Args, tc.coreUCS) {
					t.Errorf("%s args lack %s: %v", p.Name, tc.coreUCS, p.Args)
				}
			}
			if !slices.Equal(ucs, tc.ucs) {
				t.Errorf("ucs parts %v, want %v", ucs, tc.ucs)
			}
			if err := plan.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestStandardPlanInteractionInstances: with the coordination members the
// paired stages run two interaction instances (kind interaction, own
// addresses, both on --coordination, both registered behind the edge in
// stage 4); without them, one instance without --coordination.
func TestStandardPlanInteractionInstances(t *testing.T) {
	for _, tt := range []struct {
		name   string
		stage  Stage
		coord  int
		want   []string
		gossip bool
	}{
		{"single", StageSingle, 3, []string{"interaction"}, false},
		{"pair without members", StagePair, 0, []string{"interaction"}, false},
		{"pair with members", StagePair, 3, []string{"interaction", "interaction-2"}, false},
		{"mesh with members", StageMesh, 3, []string{"interaction", "interaction-2"}, true},
		{"mesh without members", StageMesh, 0, []string{"interaction"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan := StandardPlan(Layout{Addrs: DefaultAddrs(), Stage: tt.stage, CoordMembers: tt.coord})
			var got []string
			addrs := map[string]bool{}
			for _, p := range plan.Parts {
				if p.Kind != KindInteraction {
					continue
				}
				got = append(got, p.Name)
				if addrs[p.HTTP] {
					t.Errorf("%s: address %s given twice", p.Name, p.HTTP)
				}
				addrs[p.HTTP] = true
				args := strings.Join(p.Args, " ")
				if two := len(tt.want) == 2; strings.Contains(args, "--coordination=") != two {
					t.Errorf("%s: args %s: --coordination wanted %v", p.Name, args, two)
				}
				if strings.Contains(args, "--gossip-name="+p.Name+" ") != tt.gossip {
					t.Errorf("%s: args %s: registered behind the edge wanted %v", p.Name, args, tt.gossip)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("interaction parts %v, want %v", got, tt.want)
			}
		})
	}
}

// TestStandardPlanSidecarPerInstance: in stage 4 every instance behind the
// edge reaches the cores through a sidecar of its own (issue 8: one
// sidecar's death cuts off one instance, not every customer or agent),
// each sidecar with both control planes and its own cache file.
func TestStandardPlanSidecarPerInstance(t *testing.T) {
	for _, tt := range []struct {
		name  string
		coord int
		want  map[string]string // instance -> its sidecar
	}{
		{"with members", 3, map[string]string{"webapi": "sidecar-webapi", "webapi-2": "sidecar-webapi-2",
			"interaction": "sidecar-interaction", "interaction-2": "sidecar-interaction-2"}},
		{"without members", 0, map[string]string{"webapi": "sidecar-webapi", "webapi-2": "sidecar-webapi-2",
			"interaction": "sidecar-interaction"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan := StandardPlan(Layout{Addrs: DefaultAddrs(), Stage: StageMesh, CoordMembers: tt.coord})
			listeners := map[string]string{}
			for _, p := range plan.Parts {
				if p.Kind == KindProxy && p.Name != "edge" {
					listeners[p.Name] = p.GRPC
					if !slices.Contains(p.Args, "--node-id="+p.Name) || !slices.Contains(p.Args, "--listen="+p.GRPC) ||
						!slices.Contains(p.Args, "--xds=127.0.0.1:7200,127.0.0.1:7220") ||
						!slices.Contains(p.Args, "--xds-cache="+XDSCacheFile(".hachat", p.Name)) {
						t.Errorf("%s: %v", p.Name, p.Args)
					}
				}
			}
			if len(listeners) != len(tt.want) {
				t.Errorf("sidecars %v, want one per instance %v", listeners, tt.want)
			}
			for inst, sc := range tt.want {
				p, ok := plan.Part(inst)
				if !ok || listeners[sc] == "" {
					t.Errorf("%s or %s missing", inst, sc)
					continue
				}
				if !slices.Contains(p.Args, "--core="+listeners[sc]) {
					t.Errorf("%s should reach the cores through %s (%s): %v", inst, sc, listeners[sc], p.Args)
				}
			}
			if err := plan.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
	a := DefaultAddrs()
	for got, want := range map[string]string{a.SidecarWebAPI2Listen: "127.0.0.1:7321", a.SidecarWebAPI2Admin: "127.0.0.1:7322",
		a.SidecarInteraction2Listen: "127.0.0.1:7331", a.SidecarInteraction2Admin: "127.0.0.1:7332"} {
		if got != want {
			t.Errorf("default address %s, want %s (docs/design.md)", got, want)
		}
	}
}

// TestStandardPlanPairs: --pairs 3 adds core-2a/2b and core-3a/3b with
// their own pair, peer and addresses; every core part names its pair; one
// pair is the plan of before.
func TestStandardPlanPairs(t *testing.T) {
	a := DefaultAddrs()
	one := StandardPlan(Layout{Addrs: a, Stage: StageMesh, CoordMembers: 3})
	same := StandardPlan(Layout{Addrs: a, Stage: StageMesh, CoordMembers: 3, Pairs: 1})
	if !reflect.DeepEqual(one, same) {
		t.Fatal("--pairs 1 changed the plan")
	}
	pl := StandardPlan(Layout{Addrs: a, Stage: StageMesh, CoordMembers: 3, Pairs: 3, CertDir: "/certs"})
	if err := pl.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"core-a": "1", "core-b": "1", "core-2a": "2", "core-2b": "2", "core-3a": "3", "core-3b": "3"}
	n := 0
	for _, p := range pl.Parts {
		if p.Kind != KindCore {
			continue
		}
		n++
		if want[p.Name] != p.Pair {
			t.Errorf("%s pair %q, want %q", p.Name, p.Pair, want[p.Name])
		}
		args := strings.Join(p.Args, " ")
		if p.Pair != "1" && !strings.Contains(args, "--pair="+p.Pair) {
			t.Errorf("%s args lack --pair: %s", p.Name, args)
		}
		if strings.Count(args, "--tls-cert=") != 1 || !strings.Contains(args, "--tls-cert=/certs/"+p.Name+".pem") || !strings.Contains(args, "--name="+p.Name+" ") {
			t.Errorf("%s: own name and certificate once: %s", p.Name, args)
		}
	}
	if n != 6 {
		t.Fatalf("%d cores, want 6", n)
	}
	c2b, _ := pl.Part("core-2b")
	c2a, _ := pl.Part("core-2a")
	if !slices.Contains(c2b.Args, "--peer="+c2a.GRPC) || c2b.Role != "backup" || c2a.Role != "primary" {
		t.Errorf("core-2b: %v", c2b.Args)
	}
}

// TestStandardPlanPairsSidecars: with several pairs each instance behind
// the edge has a sidecar per other pair serving that pair's listener, and
// its --core-pairs names those sidecars (--pairs-from the control planes);
// one pair has neither.
func TestStandardPlanPairsSidecars(t *testing.T) {
	a := DefaultAddrs()
	one := StandardPlan(Layout{Addrs: a, Stage: StageMesh, CoordMembers: 3})
	for _, p := range one.Parts {
		if args := strings.Join(p.Args, " "); strings.Contains(args, "--core-pairs") || strings.Contains(p.Name, "-pair") {
			t.Fatalf("one pair: %s has %s", p.Name, args)
		}
	}
	pl := StandardPlan(Layout{Addrs: a, Stage: StageMesh, CoordMembers: 3, Pairs: 3, CertDir: "/certs"})
	if err := pl.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"webapi", "webapi-2", "interaction", "interaction-2"} {
		part, ok := pl.Part(inst)
		if !ok {
			t.Fatalf("no %s", inst)
		}
		args := strings.Join(part.Args, " ")
		var want []string
		for _, p := range []string{"2", "3"} {
			sc, ok := pl.Part("sidecar-" + inst + "-pair" + p)
			if !ok {
				t.Fatalf("no sidecar of pair %s for %s", p, inst)
			}
			if !slices.Contains(sc.Args, "--listener=chatcore-sidecar-"+p) || !slices.Contains(sc.Args, "--listen="+sc.GRPC) || !sc.TLS {
				t.Errorf("sidecar-%s-pair%s: %v", inst, p, sc.Args)
			}
			want = append(want, p+"="+sc.GRPC)
		}
		if !strings.Contains(args, "--core-pairs="+strings.Join(want, ",")) ||
			!strings.Contains(args, "--pairs-from=https://"+a.XDSHTTP+",https://"+a.XDSBHTTP) {
			t.Errorf("%s: want --core-pairs=%s and --pairs-from both control planes: %s", inst, strings.Join(want, ","), args)
		}
	}
}
