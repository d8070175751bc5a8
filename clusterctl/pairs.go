package clusterctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/xds"
)

// ErrNoControlPlane reports that no control plane answered (or none is
// known).
var ErrNoControlPlane = errors.New("no control plane")

// Pairs drains pairs and reads their state at the control planes' admin
// API (every control plane holds its own drain list: Drain tells each).
type Pairs struct {
	// URLs are the control planes' admin base URLs (http[s]://host:port).
	URLs []string
	// HTTP is the client (the operator's mTLS one under mTLS).
	HTTP *http.Client
	// AdminToken authorizes a drain.
	AdminToken string
}

// ControlPlanesFromState returns the admin URLs of the control planes in a
// demo state file.
func ControlPlanesFromState(path string) ([]string, error) {
	st, err := demo.ReadState(path)
	if err != nil {
		return nil, err
	}
	var urls []string
	for _, p := range st.Parts {
		if p.Kind == demo.KindXDS && p.HTTP != "" {
			scheme := "http://"
			if p.TLS {
				scheme = "https://"
			}
			urls = append(urls, scheme+p.HTTP)
		}
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("%w in %s", ErrNoControlPlane, path)
	}
	return urls, nil
}

// CoresOfPair returns the gRPC addresses of the cores of pair p listed in a
// demo state file, and every pair the file lists (sorted as listed).
func CoresOfPair(path, p string) ([]string, []string, error) {
	st, err := demo.ReadState(path)
	if err != nil {
		return nil, nil, err
	}
	var addrs, all []string
	for _, part := range st.Parts {
		if part.Kind != demo.KindCore || part.GRPC == "" {
			continue
		}
		pp := pairs.Norm(part.Pair)
		if !slices.Contains(all, pp) {
			all = append(all, pp)
		}
		if pp == pairs.Norm(p) {
			addrs = append(addrs, part.GRPC)
		}
	}
	return addrs, all, nil
}

// SetDraining drains pair (on) or undoes it at every control plane. It
// fails unless every control plane took it: a control plane that did not
// would go on placing chats there.
func (p Pairs) SetDraining(ctx context.Context, pair string, on bool) error {
	if err := pairs.Validate(pair); err != nil {
		return err
	}
	if len(p.URLs) == 0 {
		return ErrNoControlPlane
	}
	method := http.MethodPost
	if !on {
		method = http.MethodDelete
	}
	var errs []error
	for _, u := range p.URLs {
		req, err := http.NewRequestWithContext(ctx, method, u+"/xds/v1/pairs/"+pair+"/drain", nil)
		if err != nil {
			return fmt.Errorf("drain request: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+p.AdminToken)
		resp, err := p.HTTP.Do(req)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u, err))
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			errs = append(errs, fmt.Errorf("%s: %s: %s", u, resp.Status, bytes.TrimSpace(body)))
		}
	}
	return errors.Join(errs...)
}

// Status returns the pairs as the first control plane that answers sees
// them.
func (p Pairs) Status(ctx context.Context) (xds.PairsStatus, error) {
	var errs []error
	for _, u := range p.URLs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+xds.PairsPath, nil)
		if err != nil {
			return xds.PairsStatus{}, fmt.Errorf("pairs request: %w", err)
		}
		resp, err := p.HTTP.Do(req)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u, err))
			continue
		}
		var st xds.PairsStatus
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %v", u, resp.Status, err))
			continue
		}
		return st, nil
	}
	return xds.PairsStatus{}, fmt.Errorf("%w answered: %w", ErrNoControlPlane, errors.Join(errs...))
}

// WaitDrained waits until pair is draining with no live chat, printing its
// live chats to progress whenever the count changes (and every 10 s), and
// returns how long it took. ctx bounds the wait.
func (p Pairs) WaitDrained(ctx context.Context, pair string, every time.Duration, progress io.Writer) (time.Duration, error) {
	start := time.Now()
	last := int64(-1)
	lastAt := time.Time{}
	for {
		st, err := p.Status(ctx)
		if err == nil {
			found := false
			for _, info := range st.Pairs {
				if info.Name != pair {
					continue
				}
				found = true
				if info.State == xds.PairDraining && info.Live == 0 {
					return time.Since(start), nil
				}
				if int64(info.Live) != last || time.Since(lastAt) >= 10*time.Second {
					fmt.Fprintf(progress, "pair %s %s: %d live chats (waiting %s)\n", pair, info.State, info.Live, time.Since(start).Round(time.Second))
					last, lastAt = int64(info.Live), time.Now()
				}
			}
			if !found && last != -2 {
				fmt.Fprintf(progress, "pair %s: no core of it in the cluster\n", pair)
				last = -2
			}
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("pair %s not drained: %w", pair, ctx.Err())
		case <-time.After(every):
		}
	}
}
