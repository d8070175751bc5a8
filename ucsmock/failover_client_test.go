package ucsmock

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/telemetry"
)

// TestFailoverClient: two ucs instances share a PostgreSQL database. The
// client saves through the first; when it dies (its listener closed), the
// next save goes to the second with nothing lost or doubled, and the
// failure is counted for the dead instance. An answer about the data
// (stale epoch) is not retried elsewhere; with every instance down the
// error still matches ErrUnavailable.
func TestFailoverClient(t *testing.T) {
	dsn := newPGDatabase(t)
	var urls []string
	var servers []*httptest.Server
	for range 2 {
		cfg := DefaultConfig()
		cfg.Store, cfg.Postgres = StorePostgres, dsn
		srv, err := New(cfg, telemetry.Discard())
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler())
		t.Cleanup(func() { hs.Close(); srv.Close() })
		servers = append(servers, hs)
		urls = append(urls, hs.URL)
	}
	tel := telemetry.Discard()
	fc, err := NewFailoverClient(urls, func(u string) *Client { return NewClient(u, &http.Client{}, tel) }, tel)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	save := func(i uint64, epoch uint64) error {
		_, err := fc.Save(ctx, SaveRequest{ChatID: "c", Service: "chat", Epoch: epoch, Writer: "core-a", Events: evs("c", i, i)})
		return err
	}
	if err := save(1, 2); err != nil {
		t.Fatal(err)
	}
	servers[0].CloseClientConnections()
	servers[0].Close()
	if err := save(2, 2); err != nil {
		t.Fatalf("save after the first instance died: %v", err)
	}
	if got := testutil.ToFloat64(fc.failures.WithLabelValues(urls[0])); got < 1 {
		t.Fatalf("failures of the dead instance: %v, want >= 1", got)
	}
	if got := testutil.ToFloat64(fc.failures.WithLabelValues(urls[1])); got != 0 {
		t.Fatalf("failures of the live instance: %v, want 0", got)
	}
	tr, err := fc.Transcript(ctx, "c")
	if err != nil || len(tr.Events) != 2 {
		t.Fatalf("transcript after failover: %v %v", tr, err)
	}
	if err := save(3, 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale save: %v, want ErrStaleEpoch", err)
	}
	servers[1].CloseClientConnections()
	servers[1].Close()
	if err := save(3, 2); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "every ucs instance failed") {
		t.Fatalf("all down: %v, want ErrUnavailable from every instance", err)
	}
	if _, err := NewFailoverClient(nil, nil, tel); err == nil {
		t.Fatal("no instance accepted")
	}
	if _, err := NewFailoverClient([]string{"http://a", " "}, func(u string) *Client { return NewClient(u, nil, tel) }, tel); err == nil {
		t.Fatal("empty instance accepted")
	}
}

// The failover client plugs into the chat core as Client does.
var (
	_ chatcore.BatchTranscriptStore = (*FailoverClient)(nil)
	_ chatcore.ChatLister           = (*FailoverClient)(nil)
)
