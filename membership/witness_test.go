package membership

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hachat/hachat/telemetry"
)

func TestWitness(t *testing.T) {
	tel := telemetry.Discard()
	w, err := NewWitness(context.Background(), testConfig("witness"), "127.0.0.1:0", tel)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	core := startNode(t, testConfig("core-a", w.Membership().Local().Addr), coreMeta(RolePrimary, 1))
	events, unsub := core.Subscribe()
	defer unsub()
	waitFor(t, 5*time.Second, "witness sees core-a", func() bool { return stateOf(w.Membership(), "core-a") == "alive" })
	if mb, _ := core.Member("witness"); mb.Meta.Kind != KindWitness || mb.Meta.HTTPAddr != w.HTTPAddr() {
		t.Fatalf("core sees witness meta %+v, want kind witness at %s", mb.Meta, w.HTTPAddr())
	}

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + w.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	code, body := get(MembersPath)
	var view MembersView
	if err := json.Unmarshal([]byte(body), &view); code != 200 || err != nil {
		t.Fatalf("%s: %d %q %v", MembersPath, code, body, err)
	}
	if view.Self != "witness" || len(view.Members) != 2 || view.Members[0].Name != "core-a" ||
		view.Members[0].Meta.Role != RolePrimary || view.Members[0].State != StateAlive {
		t.Fatalf("members view %+v", view)
	}
	ok, err := AskReachable(context.Background(), nil, w.HTTPAddr(), core.Local().Addr)
	if err != nil || !ok {
		t.Fatalf("witness reaching core's gossip port: %v %v", ok, err)
	}
	if code, body := get("/metrics"); code != 200 ||
		!strings.Contains(body, `hachat_membership_members{state="alive"} 2`) ||
		!strings.Contains(body, `hachat_witness_reachability_checks_total{answer="reachable"} 1`) {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	waitEvent(t, events, EventLeft, "witness", 5*time.Second)
	if _, err := http.Get("http://" + w.HTTPAddr() + "/healthz"); err == nil {
		t.Fatal("witness still serving after Run returned")
	}
}

func TestNewWitnessRejectsBadAddr(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1", ":7211", "127.0.0.1:x", "127.0.0.1:70000"} {
		if _, err := NewWitness(context.Background(), testConfig("w"), addr, nil); err == nil {
			t.Fatalf("NewWitness(http %q) succeeded", addr)
		}
	}
}

func TestRegisterFlags(t *testing.T) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs)
	err := fs.Parse([]string{
		"--gossip-bind=127.0.0.1:7103", "--gossip-join", "127.0.0.1:7113, 127.0.0.1:7213,",
		"--gossip-probe-interval=300ms", "--gossip-probe-timeout=150ms", "--gossip-suspicion-mult=3",
		"--gossip-interval=20ms", "--gossip-indirect-checks=2", "--gossip-key=MDEyMzQ1Njc4OWFiY2RlZg==",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		BindAddr: "127.0.0.1:7103", Join: []string{"127.0.0.1:7113", "127.0.0.1:7213"},
		ProbeInterval: 300 * time.Millisecond, ProbeTimeout: 150 * time.Millisecond, SuspicionMult: 3,
		GossipInterval: 20 * time.Millisecond, IndirectChecks: 2, EncryptKey: "MDEyMzQ1Njc4OWFiY2RlZg==",
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("flags gave %+v, want %+v", c, want)
	}
	c.Name = "n"
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if err := DefaultConfig().Validate(); err == nil {
		t.Fatal("DefaultConfig without a name validated")
	}
}

func TestConfigYAML(t *testing.T) {
	type file struct {
		Name   string `yaml:"name"`
		Gossip Config `yaml:",inline"`
	}
	f := file{Gossip: DefaultConfig()}
	in := `
name: w9
gossip-bind: 127.0.0.1:7213
gossip-join: [127.0.0.1:7103, 127.0.0.1:7113]
gossip-probe-interval: 250ms
gossip-suspicion-mult: 3
gossip-key: MDEyMzQ1Njc4OWFiY2RlZg==
`
	dec := yaml.NewDecoder(strings.NewReader(in))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.BindAddr = "127.0.0.1:7213"
	want.Join = []string{"127.0.0.1:7103", "127.0.0.1:7113"}
	want.ProbeInterval = 250 * time.Millisecond
	want.SuspicionMult = 3
	want.EncryptKey = "MDEyMzQ1Njc4OWFiY2RlZg=="
	if f.Name != "w9" || !reflect.DeepEqual(f.Gossip, want) {
		t.Fatalf("decoded %+v", f)
	}
}
