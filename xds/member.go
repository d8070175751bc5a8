package xds

import (
	"slices"
	"sync"
)

// State is a member's liveness as the membership layer sees it.
type State int

// Member states, in the order memberlist moves through them.
const (
	// StateAlive: the member answers probes.
	StateAlive State = iota
	// StateSuspect: probes failed and the suspicion timer runs; the member
	// may still be alive.
	StateSuspect
	// StateDead: the cluster declared the member dead.
	StateDead
	// StateLeft: the member left the cluster on purpose.
	StateLeft
)

// String returns the lower-case state name used in status output.
func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// Member kinds and roles as published in membership meta.
const (
	// KindCore is a chat core: the only kind that becomes an endpoint.
	KindCore = "core"
	// KindXDS is a control plane.
	KindXDS = "xds"
	// KindWitness is a gossip member that only votes.
	KindWitness = "witness"
	// RolePrimary is the role of the core that serves clients.
	RolePrimary = "primary"
	// RoleBackup is the role of the warm standby.
	RoleBackup = "backup"
)

// Member is what the control plane needs to know about one cluster
// member. It mirrors membership.Member so that this package, and its tests,
// do not depend on the gossip layer; cmd/hachat converts.
type Member struct {
	// Name is the member's unique name in the cluster.
	Name string `json:"name"`
	// Kind is "core", "xds" or "witness"; only cores become endpoints.
	Kind string `json:"kind"`
	// Role is "primary" or "backup" (cores only).
	Role string `json:"role,omitempty"`
	// Epoch is the fencing epoch the core last claimed or saw.
	Epoch uint64 `json:"epoch"`
	// GRPCAddr is the core's chat gRPC address, host:port.
	GRPCAddr string `json:"grpcAddr,omitempty"`
	// HTTPAddr is the member's HTTP address.
	HTTPAddr string `json:"httpAddr,omitempty"`
	// Pair is the pair of a core (package pairs); empty is the default
	// pair.
	Pair string `json:"pair,omitempty"`
	// State is the member's liveness.
	State State `json:"-"`
}

// View is the control plane's window on cluster membership. Members
// returns a snapshot of every known member; Subscribe returns a channel
// that receives a value after every change (a notification, not the change:
// the receiver rereads Members) and a cancel function that stops it. A
// notification may be coalesced with others but must never be lost: the
// channel should be buffered and sends non-blocking with a pending flag, as
// MemoryView does.
type View interface {
	Members() []Member
	Subscribe() (<-chan struct{}, func())
}

// MemoryView is an in-memory View: tests and tools set the members
// directly. It is safe for concurrent use.
type MemoryView struct {
	mu      sync.Mutex
	members []Member
	subs    map[int]chan struct{}
	next    int
}

// NewMemoryView returns a view holding members.
func NewMemoryView(members ...Member) *MemoryView {
	return &MemoryView{members: slices.Clone(members), subs: map[int]chan struct{}{}}
}

// Members returns a copy of the current members.
func (v *MemoryView) Members() []Member {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.members)
}

// Subscribe returns a channel notified after every Set or Update.
func (v *MemoryView) Subscribe() (<-chan struct{}, func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	ch := make(chan struct{}, 1)
	id := v.next
	v.next++
	v.subs[id] = ch
	return ch, func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		delete(v.subs, id)
	}
}

// Set replaces all members and notifies subscribers.
func (v *MemoryView) Set(members ...Member) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.members = slices.Clone(members)
	v.notifyLocked()
}

// Update changes the member called name with fn (adding it when absent)
// and notifies subscribers.
func (v *MemoryView) Update(name string, fn func(*Member)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	i := slices.IndexFunc(v.members, func(m Member) bool { return m.Name == name })
	if i < 0 {
		v.members = append(v.members, Member{Name: name})
		i = len(v.members) - 1
	}
	fn(&v.members[i])
	v.notifyLocked()
}

func (v *MemoryView) notifyLocked() {
	for _, ch := range v.subs {
		select {
		case ch <- struct{}{}:
		default: // a notification is already pending
		}
	}
}
