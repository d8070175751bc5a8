package xds

import (
	"github.com/hachat/hachat/membership"
)

// Gossip is the part of *membership.Membership the control plane reads.
type Gossip interface {
	Members() []membership.Member
	Subscribe() (<-chan membership.Event, func())
}

// MembershipView adapts the gossip membership to View. Every membership
// event becomes one (coalescing) notification; the control plane then
// rereads Members, which is always current, so an event dropped by a full
// membership buffer costs nothing as long as a later one arrives.
func MembershipView(g Gossip) View { return gossipView{g} }

type gossipView struct{ g Gossip }

// Members converts the gossip members.
func (v gossipView) Members() []Member {
	ms := v.g.Members()
	out := make([]Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, fromMembership(m))
	}
	return out
}

// Subscribe forwards gossip events as notifications. The forwarding
// goroutine ends when the gossip channel closes, which the returned cancel
// (membership's own cancel) or the membership's Shutdown does.
func (v gossipView) Subscribe() (<-chan struct{}, func()) {
	events, cancel := v.g.Subscribe()
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		for range events {
			select {
			case out <- struct{}{}:
			default: // a notification is already pending
			}
		}
	}()
	return out, cancel
}

func fromMembership(m membership.Member) Member {
	st := StateDead
	switch m.State {
	case membership.StateAlive:
		st = StateAlive
	case membership.StateSuspect:
		st = StateSuspect
	case membership.StateDead:
		st = StateDead
	case membership.StateLeft:
		st = StateLeft
	}
	return Member{Name: m.Name, Kind: m.Meta.Kind, Role: m.Meta.Role, Epoch: m.Meta.Epoch,
		GRPCAddr: m.Meta.GRPCAddr, HTTPAddr: m.Meta.HTTPAddr, Pair: m.Meta.Pair, State: st}
}
