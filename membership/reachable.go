package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ReachablePath is the route of ReachableHandler.
const ReachablePath = "/membership/v1/reachable"

// ReachTimeout bounds the witness's TCP dial: on a LAN a live listener
// answers in well under a millisecond and a dead one refuses at once, so
// 200ms only matters for a host that drops packets.
const ReachTimeout = 200 * time.Millisecond

// ErrWitness reports that a witness could not give an answer (unreachable,
// or it answered with an error status). The caller must not read it as a
// vote either way.
var ErrWitness = errors.New("witness gave no answer")

// Reachability is the JSON answer of ReachableHandler.
type Reachability struct {
	// Reachable is true when a TCP connection to the address succeeded.
	Reachable bool `json:"reachable"`
	// Error says why the address was not reachable, or why the request was
	// bad (then with status 400).
	Error string `json:"error,omitempty"`
}

// ReachableHandler serves GET ReachablePath?addr=host:port: it dials addr
// over TCP with ReachTimeout and answers 200 with Reachability. A missing or
// malformed addr gets 400, another method 405. A kill -9'd process refuses
// the dial at once; note that a SIGSTOPped one still completes it (the
// kernel accepts for it), so a silent primary is left to gossip.
func ReachableHandler() http.Handler {
	return reachableHandler(nil)
}

// reachableHandler is ReachableHandler with a hook that sees every answer
// (the witness logs and counts them).
func reachableHandler(observe func(addr string, ans Reachability)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeJSON(w, http.StatusMethodNotAllowed, Reachability{Error: "method not allowed: use GET"})
			return
		}
		addr := r.URL.Query().Get("addr")
		if err := checkHostPort(addr); err != nil {
			writeJSON(w, http.StatusBadRequest, Reachability{Error: "addr must be host:port: " + err.Error()})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), ReachTimeout)
		defer cancel()
		var d net.Dialer
		ans := Reachability{Reachable: true}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			ans = Reachability{Reachable: false, Error: err.Error()}
		} else {
			conn.Close()
		}
		if observe != nil {
			observe(addr, ans)
		}
		writeJSON(w, http.StatusOK, ans)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// AskReachable asks the witness at witnessHTTPAddr (host:port) whether it
// can open a TCP connection to targetAddr. The backup core uses it to
// confirm "the primary is dead" from another vantage point before it
// promotes. It returns ErrWitness (wrapped) when the witness gives no
// answer; the client should carry its own timeout or ctx a deadline.
func AskReachable(ctx context.Context, client *http.Client, witnessHTTPAddr, targetAddr string) (bool, error) {
	if client == nil {
		client = http.DefaultClient
	}
	scheme, host := "http", witnessHTTPAddr
	if sch, h, ok := strings.Cut(witnessHTTPAddr, "://"); ok { // https://host:port for a witness with mTLS
		scheme, host = sch, h
	}
	u := url.URL{Scheme: scheme, Host: host, Path: ReachablePath, RawQuery: url.Values{"addr": {targetAddr}}.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, fmt.Errorf("%w: build request: %w", ErrWitness, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrWitness, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return false, fmt.Errorf("%w: read answer: %w", ErrWitness, err)
	}
	var ans Reachability
	if jerr := json.Unmarshal(body, &ans); jerr != nil {
		return false, fmt.Errorf("%w: status %d, undecodable answer: %w", ErrWitness, resp.StatusCode, jerr)
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("%w: status %d: %s", ErrWitness, resp.StatusCode, ans.Error)
	}
	return ans.Reachable, nil
}
