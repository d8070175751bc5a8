package membership

import (
	"fmt"
	"time"
)

// State is what this node believes about a member.
type State int

// States of a member, as seen from this node.
const (
	// StateAlive: the member answers probes (or has not been found wanting).
	StateAlive State = iota
	// StateSuspect: this node's own probes of the member failed; the cluster
	// is waiting for it to refute before declaring it dead. This is the local
	// view only (memberlist does not expose gossiped suspicions); it clears on
	// the next successful probe or when the member is declared dead.
	StateSuspect
	// StateDead: the cluster declared the member failed (no clean leave).
	StateDead
	// StateLeft: the member left on purpose (Leave).
	StateLeft
)

// String returns alive, suspect, dead or left.
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
	return fmt.Sprintf("State(%d)", int(s))
}

// MarshalText encodes the state as its String.
func (s State) MarshalText() ([]byte, error) {
	if s < StateAlive || s > StateLeft {
		return nil, fmt.Errorf("unknown member state %d", int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText parses alive, suspect, dead or left.
func (s *State) UnmarshalText(b []byte) error {
	for _, c := range []State{StateAlive, StateSuspect, StateDead, StateLeft} {
		if string(b) == c.String() {
			*s = c
			return nil
		}
	}
	return fmt.Errorf("unknown member state %q: want alive, suspect, dead or left", b)
}

// Member is one node of the cluster as this node sees it.
type Member struct {
	// Name is the node name, unique in the cluster.
	Name string `json:"name"`
	// Addr is the member's gossip address (ip:port).
	Addr string `json:"addr"`
	// Meta is the member's last known meta. It is the zero Meta when the
	// member gossiped meta that does not decode (logged once per change).
	Meta Meta `json:"meta"`
	// State is this node's view of the member.
	State State `json:"state"`
	// Since is when this node last saw State change (zero for itself).
	Since time.Time `json:"since,omitzero"`
}

// EventType says what happened to a member.
type EventType int

// Event types delivered to subscribers.
const (
	// EventJoined: a member appeared, or came back after being dead or left.
	EventJoined EventType = iota
	// EventUpdated: a live member changed its meta (role, epoch, addresses).
	EventUpdated
	// EventSuspected: this node's probes of the member failed. Best effort:
	// a member may also be declared failed without a prior EventSuspected.
	EventSuspected
	// EventFailed: the member was declared dead by the failure detector.
	EventFailed
	// EventLeft: the member left on purpose.
	EventLeft
)

// String returns joined, updated, suspected, failed or left.
func (t EventType) String() string {
	switch t {
	case EventJoined:
		return "joined"
	case EventUpdated:
		return "updated"
	case EventSuspected:
		return "suspected"
	case EventFailed:
		return "failed"
	case EventLeft:
		return "left"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one membership change, with the member as it is after the change.
type Event struct {
	// Type is what happened.
	Type EventType
	// Member is the member after the change.
	Member Member
}
