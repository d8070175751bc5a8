package chatcore

import (
	"context"

	"github.com/hachat/hachat/membership"
)

// Membership is the seam to the gossip membership (package membership's
// *Membership implements it). The core publishes its role and epoch with
// SetMeta; the primary steps down when it sees a core with a newer epoch
// claiming primary; the backup promotes when the primary is declared failed
// or left (the fallback for a silent primary).
type Membership interface {
	// Members returns every member this node knows, itself included.
	Members() []membership.Member
	// SetMeta replaces this node's meta and gossips it.
	SetMeta(ctx context.Context, meta membership.Meta) error
	// Subscribe returns membership events until cancel is called.
	Subscribe() (<-chan membership.Event, func())
}

// ReachableFunc asks a witness whether target (host:port) accepts TCP
// connections; membership.AskReachable bound to a witness address and an
// HTTP client is one.
type ReachableFunc func(ctx context.Context, target string) (bool, error)

// WithMembership attaches the gossip membership.
func WithMembership(m Membership) Option { return func(c *Core) { c.members = m } }

// WithWitness sets how the backup asks the witness about the primary.
func WithWitness(f ReachableFunc) Option { return func(c *Core) { c.witness = f } }
