// Package clusterctl does what Genesys SCI does for a chat server pair: it
// asks every chat core for its status and drives a planned switchover.
package clusterctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/demo"
)

// Errors callers branch on.
var (
	// ErrNoPrimary means no reachable core claims the primary role.
	ErrNoPrimary = errors.New("no primary reachable")
	// ErrNoCore means a state file lists no chat core.
	ErrNoCore = errors.New("no chat core")
)

// CoreStatus is one core's answer, or why it could not answer.
type CoreStatus struct {
	// Addr is the gRPC address that was asked.
	Addr string `json:"addr"`
	// Status is the core's own report; nil when it did not answer.
	Status *chatpb.StatusResponse `json:"status,omitempty"`
	// Err says why the core did not answer, in full.
	Err string `json:"error,omitempty"`
	// Health is HealthDead or HealthUnreachable when the core did not
	// answer, "" when it did.
	Health string `json:"health,omitempty"`
	// Reason says in a few words why the core did not answer.
	Reason string `json:"reason,omitempty"`
}

// The health of a core that did not answer (CoreStatus.Health).
const (
	// HealthDead means nothing listens at the core's address (the
	// connection was refused): its process is gone.
	HealthDead = "dead"
	// HealthUnreachable means the core's address could not be reached, or
	// something there did not answer the status call.
	HealthUnreachable = "unreachable"
)

// Ctl reaches the cores with the given transport credentials: an
// operator's mTLS certificate in a cluster with mTLS, plaintext when Creds
// is nil. The package-level functions use the zero Ctl.
type Ctl struct {
	// Creds are the gRPC transport credentials (nil: plaintext).
	Creds credentials.TransportCredentials
}

// Status asks every address for its status (Ctl{}.Status).
func Status(ctx context.Context, addrs []string, timeout time.Duration) []CoreStatus {
	return Ctl{}.Status(ctx, addrs, timeout)
}

// Switchover asks the primary to hand over to its backup (Ctl{}.Switchover).
func Switchover(ctx context.Context, addrs []string, adminToken string, timeout time.Duration) (*chatpb.SwitchoverResponse, error) {
	return Ctl{}.Switchover(ctx, addrs, adminToken, timeout)
}

// Status asks every address for its status, concurrently, each within timeout.
func (ctl Ctl) Status(ctx context.Context, addrs []string, timeout time.Duration) []CoreStatus {
	out := make([]CoreStatus, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = CoreStatus{Addr: a}
			err := ctl.withCore(ctx, a, func(c chatpb.ChatClient) error {
				cctx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				st, err := c.Status(cctx, &chatpb.StatusRequest{})
				out[i].Status = st
				return err
			})
			if err != nil {
				out[i].Err = err.Error()
				out[i].Health, out[i].Reason = diagnose(ctx, a, err, timeout)
			}
		}()
	}
	wg.Wait()
	return out
}

// diagnose says whether a core that failed the status call with err is dead
// or unreachable, and why in a few words: from the gRPC code and, when the
// transport was unavailable, from a plain TCP dial of its address.
func diagnose(ctx context.Context, addr string, err error, timeout time.Duration) (health, reason string) {
	var dialErr *dialError
	if errors.As(err, &dialErr) {
		return HealthUnreachable, "bad address"
	}
	switch code := status.Code(err); code {
	case codes.DeadlineExceeded:
		return HealthUnreachable, fmt.Sprintf("no answer within %s", timeout)
	case codes.Unauthenticated, codes.PermissionDenied:
		return HealthUnreachable, "refused our credentials (" + code.String() + ")"
	case codes.Unavailable:
		dctx, cancel := context.WithTimeout(ctx, min(timeout, time.Second))
		defer cancel()
		var d net.Dialer
		c, derr := d.DialContext(dctx, "tcp", addr)
		switch {
		case errors.Is(derr, syscall.ECONNREFUSED):
			return HealthDead, "connection refused: nothing listens there"
		case derr != nil:
			return HealthUnreachable, "no TCP connection"
		}
		c.Close()
		return HealthUnreachable, "it listens but does not answer gRPC (TLS or plaintext mismatch?)"
	default:
		return HealthUnreachable, "status call failed: " + code.String()
	}
}

// Primary returns the address of the reachable primary with the newest epoch.
func Primary(sts []CoreStatus) (CoreStatus, error) {
	var best CoreStatus
	for _, s := range sts {
		if s.Status == nil || s.Status.GetRole() != "primary" {
			continue
		}
		if best.Status == nil || s.Status.GetEpoch() > best.Status.GetEpoch() {
			best = s
		}
	}
	if best.Status == nil {
		return best, ErrNoPrimary
	}
	return best, nil
}

// Switchover asks the primary among addrs to hand over to its backup.
func (ctl Ctl) Switchover(ctx context.Context, addrs []string, adminToken string, timeout time.Duration) (*chatpb.SwitchoverResponse, error) {
	p, err := Primary(ctl.Status(ctx, addrs, timeout))
	if err != nil {
		return nil, err
	}
	var resp *chatpb.SwitchoverResponse
	err = ctl.withCore(ctx, p.Addr, func(c chatpb.ChatClient) error {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		resp, err = c.Switchover(cctx, &chatpb.SwitchoverRequest{AdminToken: adminToken})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("switchover at %s: %w", p.Addr, err)
	}
	return resp, nil
}

func (ctl Ctl) withCore(ctx context.Context, addr string, fn func(chatpb.ChatClient) error) error {
	creds := ctl.Creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return &dialError{addr: addr, err: err}
	}
	defer conn.Close()
	return fn(chatpb.NewChatClient(conn))
}

// dialError is a gRPC client that could not be made for addr (a malformed
// address).
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return fmt.Sprintf("dial %s: %v", e.addr, e.err) }
func (e *dialError) Unwrap() error { return e.err }

// WriteTable prints the statuses as a table: one row per core, then its
// view of the members. A core that did not answer shows as dead or
// unreachable with a short reason, under the name its peers know it by.
func WriteTable(w io.Writer, sts []CoreStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CORE\tADDR\tROLE\tEPOCH\tSESSIONS\tREPL LAG\tBACKUP\tNOTE")
	members := map[string]*chatpb.Member{}
	names := map[string]string{} // gRPC address -> core name, as the answering cores know them
	for _, s := range sts {
		for _, m := range s.Status.GetMembers() {
			if m.GetGrpcAddr() != "" {
				names[m.GetGrpcAddr()] = m.GetName()
			}
		}
	}
	for _, s := range sts {
		if s.Status == nil {
			name, health, reason := names[s.Addr], s.Health, s.Reason
			if name == "" {
				name = "?"
			}
			if health == "" {
				health, reason = HealthUnreachable, s.Err
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t%s\n", name, s.Addr, health, reason)
			continue
		}
		st := s.Status
		note := ""
		if st.GetDraining() {
			note = "draining"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", st.GetName(), s.Addr, st.GetRole(), st.GetEpoch(),
			st.GetLiveSessions(), st.GetReplicationLag(), st.GetBackup(), note)
		for _, m := range st.GetMembers() {
			members[m.GetName()] = m
		}
	}
	if len(members) > 0 {
		fmt.Fprintln(tw, "\nMEMBER\tSTATE\tROLE\tEPOCH\tGRPC")
		names := make([]string, 0, len(members))
		for n := range members {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			m := members[n]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", n, m.GetState(), orDash(m.GetRole()), m.GetEpoch(), orDash(m.GetGrpcAddr()))
		}
	}
	return tw.Flush()
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// CoresFromState returns the gRPC addresses of the chat cores listed in a
// demo state file.
func CoresFromState(path string) ([]string, error) {
	st, err := demo.ReadState(path)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, p := range st.Parts {
		if p.Kind == demo.KindCore && p.GRPC != "" {
			addrs = append(addrs, p.GRPC)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w in %s", ErrNoCore, path)
	}
	return addrs, nil
}
