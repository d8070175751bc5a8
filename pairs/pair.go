// Package pairs names the primary/backup pairs of chat cores and carries a
// chat's pair in its id. A cluster runs one pair or many; every chat lives on
// exactly one pair for its whole life, so every request about a chat goes to
// the pair its id names. Package xds routes by it (RDS header match), the
// cores mint ids with it, and clients set Header from it.
package pairs

import (
	"errors"
	"fmt"
	"strings"
)

// Default is the pair of a core configured without one, and of every chat
// id that names none: a cluster of one pair is today's cluster, unchanged
// (its epoch service is the cluster name, its chat ids carry no prefix).
const Default = "1"

// Header is the gRPC metadata key that names the pair a request goes to.
// A request without it (StartSession) is placed by the control plane.
const Header = "x-hachat-pair"

// Sep separates the pair from the rest of a chat id ("2.9f0c..."). It is
// not a character of a pair name.
const Sep = "."

// MaxLen is the longest pair name.
const MaxLen = 16

// ErrBadName reports a pair name that is not 1-16 lower-case letters and
// digits.
var ErrBadName = errors.New("bad pair name")

// Validate reports whether name can name a pair: 1 to MaxLen characters of
// a-z and 0-9 (it goes into resource names, metric labels, chat ids and
// etcd keys).
func Validate(name string) error {
	if name == "" || len(name) > MaxLen {
		return fmt.Errorf("%w: %q: want 1-%d characters", ErrBadName, name, MaxLen)
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return fmt.Errorf("%w: %q: only a-z and 0-9", ErrBadName, name)
		}
	}
	return nil
}

// Norm returns name, or Default for the empty name.
func Norm(name string) string {
	if name == "" {
		return Default
	}
	return name
}

// ChatID returns the id of a chat of pair p whose random part is raw: raw
// itself on the default pair, "p.raw" on any other.
func ChatID(p, raw string) string {
	if Norm(p) == Default {
		return raw
	}
	return p + Sep + raw
}

// Of returns the pair a chat id names: the part before Sep when it is a
// valid pair name, else Default.
func Of(chatID string) string {
	p, _, ok := strings.Cut(chatID, Sep)
	if !ok || Validate(p) != nil {
		return Default
	}
	return p
}

// Service returns the epoch service (the fencing key, the service of every
// transcript save) of pair p in cluster: cluster itself for the default
// pair, "cluster-p" for any other, so that each pair has its own epoch and
// a backup restores only its own pair's chats.
func Service(cluster, p string) string {
	if Norm(p) == Default {
		return cluster
	}
	return cluster + "-" + p
}
