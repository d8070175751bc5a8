// Package clusterctl does what Genesys SCI does for a chat server pair: it
// asks every chat core for its status and drives a planned switchover.
package clusterctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

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
	// Err says why the core did not answer.
	Err string `json:"error,omitempty"`
}

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
			}
		}()
	}
	wg.Wait()
	return out
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
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	return fn(chatpb.NewChatClient(conn))
}

// WriteTable prints the statuses as a table: one row per core, then its
// view of the members.
func WriteTable(w io.Writer, sts []CoreStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CORE\tADDR\tROLE\tEPOCH\tSESSIONS\tREPL LAG\tBACKUP\tNOTE")
	members := map[string]*chatpb.Member{}
	for _, s := range sts {
		if s.Status == nil {
			fmt.Fprintf(tw, "?\t%s\tunreachable\t\t\t\t\t%s\n", s.Addr, s.Err)
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
