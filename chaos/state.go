// Package chaos is a nemesis in the spirit of Jepsen: it drives a workload
// of concurrent chats against a running demo cluster (customers through the
// customer entrypoint, agents through interaction, a supervisor monitoring
// every chat) while it injects random faults into the parts listed in the
// demo's state file (kill -9, SIGSTOP, a network partition made of iptables
// rules, every UCS instance down, a graceful restart), restarts what it
// killed, samples every core's role and epoch, and at the end proves with
// package workload's checker that every acknowledged message is in every
// view and in UCS exactly once, in order, and that no epoch had two
// primaries. It reports the faults, the failovers and the worst
// client-visible pause per kind of fault, and draws the run as an SVG.
package chaos

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Part is one part of the cluster as the state file lists it. Kind is
// whatever the state file says: new kinds of parts (etcd members, control
// planes, edges) are faulted without code changes.
type Part struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	PID   int    `json:"pid"`
	Role  string `json:"role,omitempty"`
	HTTP  string `json:"http,omitempty"`
	GRPC  string `json:"grpc,omitempty"`
	TLS   bool   `json:"tls,omitempty"`
	State string `json:"state"`
	Log   string `json:"log,omitempty"`
	// Ports are every loopback port named in the part's entry (http, grpc
	// and any other "host:port" field a newer state file adds).
	Ports []int `json:"-"`
}

// Account is an agent desktop login of the state file.
type Account struct {
	User     string `json:"user"`
	Password string `json:"password"`
	Role     string `json:"role"`
}

// State is what chaos reads from the demo's state file.
type State struct {
	Parts       []Part `json:"parts"`
	Entrypoints struct {
		Customer string `json:"customer"`
		Agent    string `json:"agent"`
	} `json:"entrypoints"`
	Credentials struct {
		Accounts       []Account `json:"accounts"`
		AdminToken     string    `json:"adminToken"`
		UCSReaderToken string    `json:"ucsReaderToken"`
		CertDir        string    `json:"certDir"`
	} `json:"credentials"`
	Control string `json:"control,omitempty"`
}

// ReadState reads and parses a demo state file.
func ReadState(path string) (State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("read state: %w", err)
	}
	return ParseState(b)
}

// ParseState parses the content of a demo state file.
func ParseState(b []byte) (State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("parse state: %w", err)
	}
	var raw struct {
		Parts []map[string]any `json:"parts"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return State{}, fmt.Errorf("parse state: %w", err)
	}
	for i := range st.Parts {
		if i < len(raw.Parts) {
			st.Parts[i].Ports = portsOf(raw.Parts[i])
		}
	}
	return st, nil
}

// portsOf collects the ports of every "host:port" or URL string in a part's
// entry, sorted, without duplicates.
func portsOf(entry map[string]any) []int {
	seen := map[int]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if p := portOf(x); p > 0 {
				seen[p] = true
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	for k, v := range entry {
		if k == "log" || k == "name" || k == "kind" {
			continue
		}
		walk(v)
	}
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

func portOf(s string) int {
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
		if j := strings.IndexByte(s, '/'); j >= 0 {
			s = s[:j]
		}
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return 0
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return 0
	}
	return p
}

// Part returns the part called name.
func (st State) Part(name string) (Part, bool) {
	for _, p := range st.Parts {
		if p.Name == name {
			return p, true
		}
	}
	return Part{}, false
}

// OfKind returns the parts of kind, in state-file order.
func (st State) OfKind(kind string) []Part {
	var out []Part
	for _, p := range st.Parts {
		if p.Kind == kind {
			out = append(out, p)
		}
	}
	return out
}

// CustomerURL is where customers start chats: the edge when the state file
// names one, else the first webapi.
func (st State) CustomerURL() string {
	if st.Entrypoints.Customer != "" {
		return strings.TrimSuffix(st.Entrypoints.Customer, "/")
	}
	return st.firstURL("webapi")
}

// AgentURL is where agents log in: the edge when the state file names one,
// else the first interaction.
func (st State) AgentURL() string {
	if st.Entrypoints.Agent != "" {
		return strings.TrimSuffix(st.Entrypoints.Agent, "/")
	}
	return st.firstURL("interaction")
}

func (st State) firstURL(kind string) string {
	for _, p := range st.OfKind(kind) {
		return p.URL()
	}
	return ""
}

// URL is the part's HTTP base URL.
func (p Part) URL() string {
	if p.HTTP == "" {
		return ""
	}
	if strings.Contains(p.HTTP, "://") {
		return strings.TrimSuffix(p.HTTP, "/")
	}
	scheme := "http"
	if p.TLS {
		scheme = "https"
	}
	return scheme + "://" + p.HTTP
}
