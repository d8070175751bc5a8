package docker

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/interaction/auth"
)

// composeFile is the part of deploy/compose.yaml the shape test reads.
type composeFile struct {
	Services map[string]struct {
		Image       string   `yaml:"image"`
		PullPolicy  string   `yaml:"pull_policy"`
		Restart     string   `yaml:"restart"`
		Build       any      `yaml:"build"`
		Command     []string `yaml:"command"`
		Ports       []string `yaml:"ports"`
		NetworkMode string   `yaml:"network_mode"`
		Networks    map[string]struct {
			IPv4 string `yaml:"ipv4_address"`
		} `yaml:"networks"`
	} `yaml:"services"`
}

// composePath is deploy/compose.yaml, relative to this package.
var composePath = filepath.Join("..", "..", "deploy", "compose.yaml")

func readCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile(composePath)
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("parse %s: %v", composePath, err)
	}
	return f
}

// TestComposeShape checks the promises of deploy/compose.yaml that do not
// need Docker: the parts of the standard cluster, each from the prebuilt
// image and never pulled or built, none restarted, only webapi, interaction
// and ucsmock published and only on 127.0.0.1, clients reaching the cores
// only through the sidecar in their own network namespace.
func TestComposeShape(t *testing.T) {
	f := readCompose(t)
	want := map[string]string{ // service -> hachat subcommand
		"ucs": "ucs", "core-a": "core", "core-b": "core", "xds": "xds", "xds-b": "xds",
		"core-2a": "core", "core-2b": "core", "core-3a": "core", "core-3b": "core",
		"webapi": "webapi", "sidecar-webapi": "proxy",
		"webapi-2": "webapi", "sidecar-webapi-2": "proxy",
		"interaction": "interaction", "sidecar-interaction": "proxy",
		"interaction-2": "interaction", "sidecar-interaction-2": "proxy",
		"edge": "proxy", "certs": "certs", "etcd-1": "coord", "etcd-2": "coord", "etcd-3": "coord",
	}
	var got []string
	for name := range f.Services {
		got = append(got, name)
	}
	slices.Sort(got)
	var wantNames []string
	for name := range want {
		wantNames = append(wantNames, name)
	}
	slices.Sort(wantNames)
	if !slices.Equal(got, wantNames) {
		t.Fatalf("services %v, want %v", got, wantNames)
	}
	// The edge holds the customers' and the agents' address; the instances
	// behind it publish nothing.
	published := map[string][]string{"edge": {":8080", ":8081"}, "ucs": {":7080"}}
	addrs := map[string]string{} // fixed address -> service
	issued := map[string]bool{}  // names the certs service issues a certificate for
	for _, a := range f.Services["certs"].Command {
		if spec, ok := strings.CutPrefix(a, "--part="); ok {
			_, nameHosts, _ := strings.Cut(spec, "/")
			n, _, _ := strings.Cut(nameHosts, "=")
			issued[n] = true
		}
	}
	for name, s := range f.Services {
		if s.Image != "${HACHAT_IMAGE:-hachat:dev}" {
			t.Errorf("%s: image %q, want ${HACHAT_IMAGE:-hachat:dev}", name, s.Image)
		}
		if s.PullPolicy != "never" || s.Build != nil {
			t.Errorf("%s: pull_policy %q build %v: the image must be neither pulled nor built", name, s.PullPolicy, s.Build)
		}
		if s.Restart != "no" {
			t.Errorf("%s: restart %q, want \"no\" (a killed part stays dead)", name, s.Restart)
		}
		if len(s.Command) == 0 || s.Command[0] != want[name] {
			t.Errorf("%s: command %v, want hachat %s", name, s.Command, want[name])
		}
		if ports, ok := published[name]; ok {
			if len(s.Ports) != len(ports) {
				t.Errorf("%s: ports %v, want %v", name, s.Ports, ports)
			}
			for i, port := range ports {
				if i < len(s.Ports) && (!strings.HasPrefix(s.Ports[i], "127.0.0.1:") || !strings.HasSuffix(s.Ports[i], port)) {
					t.Errorf("%s: ports %v, want 127.0.0.1:${...}%s", name, s.Ports, port)
				}
			}
		} else if len(s.Ports) > 0 {
			t.Errorf("%s: ports %v, want none published", name, s.Ports)
		}
		args := strings.Join(s.Command, " ")
		switch name {
		case "webapi", "webapi-2", "interaction", "interaction-2":
			if strings.HasPrefix(name, "interaction") && !strings.Contains(args, "--coordination=") {
				t.Errorf("%s: %s: want --coordination (the instances elect a leader and keep its state in etcd)", name, args)
			}
			if !strings.Contains(args, "--core=127.0.0.1:") {
				t.Errorf("%s: %s: want --core on loopback (its sidecar)", name, args)
			}
			if !strings.Contains(args, "--proxy-protocol-from=${HACHAT_SUBNET:-172.28.71}.40") {
				t.Errorf("%s: %s: want the edge's PROXY protocol header trusted (the edge sends one on every connection)", name, args)
			}
			if !strings.Contains(args, "--gossip-name="+name+" ") || !strings.Contains(args, "--gossip-join=") {
				t.Errorf("%s: %s: want it registered in the gossip cluster under its name (the edge learns it)", name, args)
			}
		case "edge":
			if !strings.Contains(args, "--ingress ") || !strings.Contains(args, "--agent-listen=") {
				t.Errorf("edge: %s: want the proxy in ingress mode with both addresses", args)
			}
			if !strings.Contains(args, ".20:7200,${HACHAT_SUBNET:-172.28.71}.21:7200") || !strings.Contains(args, "--xds-cache=/state/") {
				t.Errorf("edge: %s: want --xds with both control planes and --xds-cache under /state", args)
			}
		case "xds", "xds-b":
			if !strings.Contains(args, "--ingress-customer=") || !strings.Contains(args, "--ingress-agent=") {
				t.Errorf("xds: %s: want the ingress published", args)
			}
			// Issue 10: with several pairs the drained pairs live in etcd,
			// alike at both control planes.
			if !strings.Contains(args, "--coordination=${HACHAT_SUBNET:-172.28.71}.41:7401") {
				t.Errorf("%s: %s: want --coordination (the drain list of several pairs)", name, args)
			}
		case "sidecar-webapi", "sidecar-webapi-2", "sidecar-interaction", "sidecar-interaction-2":
			if owner := strings.TrimPrefix(name, "sidecar-"); s.NetworkMode != "service:"+owner {
				t.Errorf("%s: network_mode %q, want service:%s", name, s.NetworkMode, owner)
			}
			// Issue 8: both control planes, and a cache file on a volume.
			if !strings.Contains(args, ".20:7200,${HACHAT_SUBNET:-172.28.71}.21:7200") || !strings.Contains(args, "--xds-cache=/state/") {
				t.Errorf("%s: %s: want --xds with both control planes and --xds-cache under /state", name, args)
			}
		case "core-a", "core-b", "core-2a", "core-2b", "core-3a", "core-3b":
			if !strings.Contains(args, ".20:7203") || !strings.Contains(args, ".21:7203") {
				t.Errorf("%s: %s: want to gossip with both control planes", name, args)
			}
			// Issue 10: pair 1 is core-a and core-b (no --pair, the
			// default); core-<p>a and core-<p>b are pair p, primary and
			// backup, each the other's peer, epochs in etcd.
			pair, role, peer := "", "primary", "core-b"
			switch name {
			case "core-b":
				role, peer = "backup", "core-a"
			case "core-2a", "core-2b", "core-3a", "core-3b":
				pair = name[5:6]
				if name[6] == 'b' {
					role, peer = "backup", name[:6]+"a"
				} else {
					peer = name[:6] + "b"
				}
			}
			if got := flagOf(s.Command, "--pair"); got != pair {
				t.Errorf("%s: --pair %q, want %q", name, got, pair)
			}
			if got := flagOf(s.Command, "--role"); got != role {
				t.Errorf("%s: --role %q, want %q", name, got, role)
			}
			if got, want := flagOf(s.Command, "--peer"), flagOf(f.Services[peer].Command, "--grpc"); got == "" || got != want {
				t.Errorf("%s: --peer %q, want %s's --grpc %q", name, got, peer, want)
			}
			if !strings.Contains(args, "--coordination=") {
				t.Errorf("%s: %s: want --coordination (its pair's epoch in etcd)", name, args)
			}
		}
		// Every part speaks mTLS with its own certificate from the cert dir,
		// which the certs service issues.
		if name != "certs" && (!strings.Contains(args, "--tls-cert=/certs/"+name+".pem") || !strings.Contains(args, "--tls-ca=/certs/ca.pem")) {
			t.Errorf("%s: %s: want --tls-ca and its own --tls-cert from /certs", name, args)
		}
		if name != "certs" && !issued[name] {
			t.Errorf("%s: the certs service issues it no certificate (--part=KIND/%s)", name, name)
		}
		if name == "certs" {
			continue
		}
		if s.NetworkMode == "" {
			ip := s.Networks["hachat"].IPv4
			if ip == "" {
				t.Errorf("%s: no fixed address on the hachat network", name)
			} else if other, dup := addrs[ip]; dup {
				t.Errorf("%s and %s share the fixed address %s", name, other, ip)
			}
			addrs[ip] = name
		}
		// Everything but a sidecar's data listener binds the part's own
		// address, never 0.0.0.0 (which memberlist and the cores would
		// advertise) and never loopback (unreachable from other containers).
		for _, a := range s.Command[1:] {
			flag, val, _ := strings.Cut(a, "=")
			switch flag {
			case "--http", "--grpc", "--gossip-bind", "--admin", "--client", "--peer":
				if strings.HasPrefix(val, "0.0.0.0") || strings.HasPrefix(val, "127.") {
					t.Errorf("%s: %s binds %s: want the container's address", name, flag, val)
				}
			}
		}
	}
}

// flagOf returns the value of flag (--name=value) in args, "" if absent.
func flagOf(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

// composeAccounts are the public demo accounts of deploy/accounts.json, which
// deploy/compose.yaml mounts into interaction (documented there).
var composeAccounts = []demo.AccountCredential{
	{User: "ada", Password: "hachat-demo-ada", Role: "agent"},
	{User: "grace", Password: "hachat-demo-grace", Role: "agent"},
	{User: "sam", Password: "hachat-demo-sam", Role: "supervisor"},
}

// TestComposeAccounts checks that the accounts file compose mounts holds the
// documented demo accounts, with the documented passwords and roles.
func TestComposeAccounts(t *testing.T) {
	list, err := auth.ReadAccounts(filepath.Join("..", "..", "deploy", "accounts.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(composeAccounts) {
		t.Fatalf("deploy/accounts.json holds %d accounts, want %d", len(list), len(composeAccounts))
	}
	for i, want := range composeAccounts {
		a := list[i]
		if a.ID != want.User || a.Role != want.Role || !auth.VerifyPassword(a.Hash, want.Password) {
			t.Errorf("account %d: %s/%s does not match %s/%s with the documented password", i, a.ID, a.Role, want.User, want.Role)
		}
	}
	f := readCompose(t)
	if !slices.Contains(f.Services["interaction"].Command, "--accounts=/etc/hachat/accounts.json") {
		t.Errorf("interaction is not given the mounted accounts file: %q", f.Services["interaction"].Command)
	}
}
