// Package demo is the process supervisor behind `hachat demo` and the
// end-to-end test harness: it starts every part of a cluster as its own child
// process of the hachat binary, waits until each one is ready, records who
// runs where in a state file, never restarts a part that someone killed, and
// stops them all on request.
package demo

import (
	"errors"
	"fmt"
	"net"
	"slices"
)

// Kind is the kind of a part; it is also the hachat subcommand that runs it
// (except KindCore, whose subcommand is "core" too, and KindProxy, "proxy").
type Kind string

// The kinds of part a plan can hold.
const (
	KindCore        Kind = "core"
	KindUCS         Kind = "ucs"
	KindWebAPI      Kind = "webapi"
	KindInteraction Kind = "interaction"
	KindXDS         Kind = "xds"
	KindProxy       Kind = "proxy"
	KindWitness     Kind = "witness"
	// KindCoord is a member of the coordination cluster (embedded etcd).
	KindCoord Kind = "coord"
)

// Valid reports whether k is one of the known kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindCore, KindUCS, KindWebAPI, KindInteraction, KindXDS, KindProxy, KindWitness, KindCoord:
		return true
	}
	return false
}

// Part is one process of a cluster.
type Part struct {
	// Name identifies the part in the plan, the state file and its log file
	// (e.g. "core-a").
	Name string `json:"name"`
	// Kind selects the hachat subcommand that runs it.
	Kind Kind `json:"kind"`
	// Role is the configured role of a core ("primary", "backup"); empty for others.
	Role string `json:"role,omitempty"`
	// HTTP is the part's HTTP address (host:port): /healthz, /metrics and its API.
	// Readiness is a 200 from http://HTTP/healthz.
	HTTP string `json:"http,omitempty"`
	// GRPC is the part's gRPC (or TCP listener) address, if it has one.
	GRPC string `json:"grpc,omitempty"`
	// Pair is a core's pair ("1", "2", ...; package pairs); empty for
	// the other kinds. The state file carries it.
	Pair string `json:"pair,omitempty"`
	// TLS says the HTTP address serves HTTPS with mTLS: a client needs a
	// certificate of the cluster (the operator's, for people and tests).
	TLS bool `json:"tls,omitempty"`
	// Args are the subcommand's flags (the subcommand itself is added).
	Args []string `json:"-"`
}

// Command returns the full argument list passed to the hachat binary.
func (p Part) Command() []string {
	return append([]string{string(p.Kind)}, p.Args...)
}

// URL returns http://HTTP (https:// when the part serves mTLS; no
// trailing slash), or "" when the part has no HTTP address.
func (p Part) URL() string {
	if p.HTTP == "" {
		return ""
	}
	if p.TLS {
		return "https://" + p.HTTP
	}
	return "http://" + p.HTTP
}

// Plan is the ordered list of parts of a cluster; parts start in this order
// (each one ready before the next starts) and stop in reverse.
type Plan struct {
	Parts []Part
	// Entrypoints are the one address of customers and the one of agents
	// (the edge's, when the plan has one), written to the state file.
	Entrypoints Entrypoints
}

// Entrypoints are the URLs people and clients use: customers open
// Customer (the web sample, the widget, the GMS API), agents and
// supervisors Customer's sibling Agent (+ "/agent" for the desktop).
type Entrypoints struct {
	Customer string `json:"customer"`
	Agent    string `json:"agent"`
}

// Sentinel errors of plans and supervisors.
var (
	// ErrUnknownPart is returned for a part name the plan does not hold.
	ErrUnknownPart = errors.New("unknown part")
	// ErrBadPlan is returned by Validate for an unusable plan.
	ErrBadPlan = errors.New("bad plan")
)

// Part returns the part called name.
func (p Plan) Part(name string) (Part, bool) {
	for _, part := range p.Parts {
		if part.Name == name {
			return part, true
		}
	}
	return Part{}, false
}

// Names returns the names of the parts, in plan order.
func (p Plan) Names() []string {
	out := make([]string, 0, len(p.Parts))
	for _, part := range p.Parts {
		out = append(out, part.Name)
	}
	return out
}

// With returns a copy of p whose part called name gets args appended to its
// flags (later flags win in Go's flag package). Unknown names are ignored, so
// that a test can tune a part that only some plans hold.
func (p Plan) With(name string, args ...string) Plan {
	out := p.Clone()
	for i := range out.Parts {
		if out.Parts[i].Name == name {
			out.Parts[i].Args = append(out.Parts[i].Args, args...)
		}
	}
	return out
}

// WithKind is With for every part of kind k.
func (p Plan) WithKind(k Kind, args ...string) Plan {
	out := p.Clone()
	for i := range out.Parts {
		if out.Parts[i].Kind == k {
			out.Parts[i].Args = append(out.Parts[i].Args, args...)
		}
	}
	return out
}

// Without returns a copy of p without the named parts.
func (p Plan) Without(names ...string) Plan {
	out := Plan{Entrypoints: p.Entrypoints}
	for _, part := range p.Clone().Parts {
		if !slices.Contains(names, part.Name) {
			out.Parts = append(out.Parts, part)
		}
	}
	return out
}

// Clone returns a deep copy of p.
func (p Plan) Clone() Plan {
	out := Plan{Parts: make([]Part, len(p.Parts)), Entrypoints: p.Entrypoints}
	for i, part := range p.Parts {
		part.Args = slices.Clone(part.Args)
		out.Parts[i] = part
	}
	return out
}

// Validate checks names are unique and non-empty, kinds known, and addresses
// host:port on a loopback or unspecified host.
func (p Plan) Validate() error {
	if len(p.Parts) == 0 {
		return fmt.Errorf("%w: no parts", ErrBadPlan)
	}
	seen := map[string]bool{}
	for _, part := range p.Parts {
		if part.Name == "" {
			return fmt.Errorf("%w: a part has no name", ErrBadPlan)
		}
		if seen[part.Name] {
			return fmt.Errorf("%w: part %q twice", ErrBadPlan, part.Name)
		}
		seen[part.Name] = true
		if !part.Kind.Valid() {
			return fmt.Errorf("%w: part %q has unknown kind %q", ErrBadPlan, part.Name, part.Kind)
		}
		for _, addr := range []string{part.HTTP, part.GRPC} {
			if addr == "" {
				continue
			}
			if _, _, err := net.SplitHostPort(addr); err != nil {
				return fmt.Errorf("%w: part %q address %q: %v", ErrBadPlan, part.Name, addr, err)
			}
		}
	}
	return nil
}
