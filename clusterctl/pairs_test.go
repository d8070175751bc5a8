package clusterctl

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/xds"
)

// fakeControlPlane answers the pair routes: drains need the token; live
// counts down by one per GET.
type fakeControlPlane struct {
	mu      sync.Mutex
	drained map[string]bool
	live    uint64
	down    bool
}

func (f *fakeControlPlane) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /xds/v1/pairs/{pair}/drain", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.down {
			http.Error(w, `{"error":"boom"}`, http.StatusInternalServerError)
			return
		}
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, `{"error":"missing or wrong admin token"}`, http.StatusForbidden)
			return
		}
		f.drained[r.PathValue("pair")] = true
	})
	mux.HandleFunc("GET "+xds.PairsPath, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		st := xds.PairsStatus{}
		state := xds.PairServing
		if f.drained["2"] {
			state = xds.PairDraining
		}
		st.Pairs = append(st.Pairs, xds.PairInfo{Name: "2", State: state, Live: f.live})
		if f.live > 0 {
			f.live--
		}
		_ = json.NewEncoder(w).Encode(st)
	})
	return mux
}

func TestPairsDrainEveryControlPlane(t *testing.T) {
	a := &fakeControlPlane{drained: map[string]bool{}, live: 3}
	b := &fakeControlPlane{drained: map[string]bool{}, down: true}
	sa, sb := httptest.NewServer(a.handler()), httptest.NewServer(b.handler())
	defer sa.Close()
	defer sb.Close()
	ps := Pairs{URLs: []string{sa.URL, sb.URL}, HTTP: http.DefaultClient, AdminToken: "tok"}
	ctx := context.Background()

	// A bad name is refused before any call.
	if err := ps.SetDraining(ctx, "Bad!", true); err == nil || a.drained["Bad!"] {
		t.Fatalf("bad name: %v", err)
	}
	// One control plane failing fails the drain, naming it.
	err := ps.SetDraining(ctx, "2", true)
	if err == nil || !strings.Contains(err.Error(), sb.URL) {
		t.Fatalf("drain with one control plane failing: %v", err)
	}
	b.mu.Lock()
	b.down = false
	b.mu.Unlock()
	if err := ps.SetDraining(ctx, "2", true); err != nil {
		t.Fatal(err)
	}
	if !a.drained["2"] || !b.drained["2"] {
		t.Fatalf("drained at a %v, b %v", a.drained, b.drained)
	}
	var out strings.Builder
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := ps.WaitDrained(wctx, "2", 10*time.Millisecond, &out); err != nil {
		t.Fatalf("wait: %v\n%s", err, out.String())
	}
	for _, want := range []string{"3 live chats", "2 live chats", "1 live chats"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, out.String())
		}
	}
	// A wrong token is refused.
	ps.AdminToken = "nope"
	if err := ps.SetDraining(ctx, "3", true); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("wrong token: %v", err)
	}
}
