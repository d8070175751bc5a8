package membership

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/hashicorp/memberlist"

	"github.com/hachat/hachat/pairs"
)

// Kinds of member. A core serves chats, the xds control plane and the witness
// only watch and vote (they confirm from a second vantage point that a core is
// gone).
const (
	KindCore    = "core"
	KindXDS     = "xds"
	KindWitness = "witness"
	// KindWebAPI and KindInteraction are the instances behind the edge:
	// they gossip only so that the control plane publishes them (their
	// HTTPAddr is their public listener); they never vote.
	KindWebAPI      = "webapi"
	KindInteraction = "interaction"
)

// Roles of a core. Members that are not cores carry the empty role.
const (
	RolePrimary = "primary"
	RoleBackup  = "backup"
)

// MaxMetaSize is the largest encoded meta memberlist gossips (its
// MetaMaxSize): a node's meta must fit in one packet with the alive message.
const MaxMetaSize = memberlist.MetaMaxSize

var (
	// ErrBadMeta reports node meta that does not parse or does not validate.
	ErrBadMeta = errors.New("bad node meta")
	// ErrMetaTooLarge reports node meta whose encoding exceeds MaxMetaSize.
	ErrMetaTooLarge = errors.New("node meta too large")
)

// Meta is what every member tells the others about itself. It travels as
// compact JSON in memberlist's node meta, so it must stay under MaxMetaSize
// bytes once encoded.
type Meta struct {
	// Kind is core, xds, witness, webapi or interaction.
	Kind string `json:"kind"`
	// Role is primary or backup for a core, empty for the others.
	Role string `json:"role"`
	// Epoch is the fencing epoch the core holds (0 before any claim).
	Epoch uint64 `json:"epoch"`
	// GRPCAddr is the member's gRPC service address (host:port), if any.
	GRPCAddr string `json:"grpc"`
	// HTTPAddr is the member's HTTP address (host:port): /healthz, /metrics
	// and, for witnesses and the control plane, /membership/v1/reachable.
	HTTPAddr string `json:"http"`
	// Pair names the primary/backup pair of a core (package pairs); empty
	// is the default pair. Only cores have one.
	Pair string `json:"pair,omitempty"`
}

// Validate reports whether m is well formed: a known kind, a role only on
// cores, and addresses that are empty or host:port with a numeric port.
func (m Meta) Validate() error {
	switch m.Kind {
	case KindCore:
		if m.Role != RolePrimary && m.Role != RoleBackup && m.Role != "" {
			return fmt.Errorf("%w: role %q: want primary, backup or empty", ErrBadMeta, m.Role)
		}
		if m.Pair != "" {
			if err := pairs.Validate(m.Pair); err != nil {
				return fmt.Errorf("%w: %w", ErrBadMeta, err)
			}
		}
	case KindXDS, KindWitness, KindWebAPI, KindInteraction:
		if m.Role != "" {
			return fmt.Errorf("%w: role %q on a %s member: only cores have a role", ErrBadMeta, m.Role, m.Kind)
		}
		if m.Pair != "" {
			return fmt.Errorf("%w: pair %q on a %s member: only cores have a pair", ErrBadMeta, m.Pair, m.Kind)
		}
	default:
		return fmt.Errorf("%w: kind %q: want core, xds, witness, webapi or interaction", ErrBadMeta, m.Kind)
	}
	for _, a := range []struct{ name, addr string }{{"grpc", m.GRPCAddr}, {"http", m.HTTPAddr}} {
		if a.addr == "" {
			continue
		}
		if err := checkHostPort(a.addr); err != nil {
			return fmt.Errorf("%w: %s address: %w", ErrBadMeta, a.name, err)
		}
	}
	return nil
}

// checkHostPort accepts host:port with a port in 1..65535 (0 for "any" makes
// no sense in an advertised address).
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("%q: empty host", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port must be 1-65535", addr)
	}
	return nil
}

// EncodeMeta validates m and encodes it as compact JSON. It fails with
// ErrBadMeta or ErrMetaTooLarge.
func EncodeMeta(m Meta) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: encode: %w", ErrBadMeta, err)
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, memberlist allows %d", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	return b, nil
}

// DecodeMeta parses and validates node meta as gossiped by EncodeMeta. Unknown
// JSON fields are rejected so that a typo never silently drops a field.
func DecodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, fmt.Errorf("%w: empty", ErrBadMeta)
	}
	if len(b) > MaxMetaSize {
		return Meta{}, fmt.Errorf("%w: %d bytes, memberlist allows %d", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Meta
	if err := dec.Decode(&m); err != nil {
		return Meta{}, fmt.Errorf("%w: %w", ErrBadMeta, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Meta{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadMeta)
	}
	if err := m.Validate(); err != nil {
		return Meta{}, err
	}
	return m, nil
}
