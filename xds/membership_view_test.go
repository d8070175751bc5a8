package xds

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/membership"
)

// fakeGossip is a Gossip whose events the test sends.
type fakeGossip struct {
	mu      sync.Mutex
	members []membership.Member
	ch      chan membership.Event
}

func (f *fakeGossip) Members() []membership.Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.members)
}

func (f *fakeGossip) Subscribe() (<-chan membership.Event, func()) {
	var once sync.Once
	return f.ch, func() { once.Do(func() { close(f.ch) }) }
}

func TestMembershipView(t *testing.T) {
	g := &fakeGossip{ch: make(chan membership.Event, 8), members: []membership.Member{
		{Name: "core-a", State: membership.StateSuspect, Meta: membership.Meta{Kind: membership.KindCore, Role: membership.RolePrimary, Epoch: 3, GRPCAddr: "127.0.0.1:7101", HTTPAddr: "127.0.0.1:7102"}},
		{Name: "xds", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindXDS}},
		{Name: "gone", State: membership.StateLeft, Meta: membership.Meta{Kind: membership.KindCore}},
		{Name: "dead", State: membership.StateDead, Meta: membership.Meta{Kind: membership.KindCore}},
	}}
	v := MembershipView(g)
	got := v.Members()
	want := []Member{
		{Name: "core-a", Kind: KindCore, Role: RolePrimary, Epoch: 3, GRPCAddr: "127.0.0.1:7101", HTTPAddr: "127.0.0.1:7102", State: StateSuspect},
		{Name: "xds", Kind: KindXDS, State: StateAlive},
		{Name: "gone", Kind: KindCore, State: StateLeft},
		{Name: "dead", Kind: KindCore, State: StateDead},
	}
	if !slices.Equal(got, want) {
		t.Errorf("members = %+v\nwant %+v", got, want)
	}
	notes, cancel := v.Subscribe()
	for range 5 {
		g.ch <- membership.Event{Type: membership.EventUpdated}
	}
	select {
	case <-notes:
	case <-time.After(time.Second):
		t.Fatal("no notification")
	}
	cancel()
	deadline := time.After(time.Second)
	for {
		select {
		case _, ok := <-notes:
			if !ok {
				return // forwarding goroutine ended
			}
		case <-deadline:
			t.Fatal("notification channel not closed after cancel")
		}
	}
}
