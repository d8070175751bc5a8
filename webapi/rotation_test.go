package webapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// sendAnswer is what rawSend saw.
type sendAnswer struct {
	code, sc int  // HTTP status, the answer's statusCode
	closing  bool // the server closes the connection after it
	err      error
}

// rawSend posts a send on client.
func rawSend(client *http.Client, base string, c chat, text string) sendAnswer {
	b, _ := json.Marshal(c.params(map[string]any{"message": text}))
	res, err := client.Post(base+"/genesys/2/chat/customer-support/"+c.id+"/send", "application/json", bytes.NewReader(b))
	if err != nil {
		return sendAnswer{err: err}
	}
	defer res.Body.Close()
	var r response
	body, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(body, &r); err != nil {
		return sendAnswer{err: fmt.Errorf("answer %d is not JSON: %q", res.StatusCode, body)}
	}
	return sendAnswer{code: res.StatusCode, sc: r.StatusCode, closing: res.Close}
}

// TestLeaveRotation: an instance that leaves the edge's rotation (its
// sidecar died) ends its push channels, makes a call in flight give up at
// once and refuses new ones without calling the core, all answered "send
// again" on a connection it closes, so that each client comes back through
// the edge to another instance; back in rotation it serves again.
func TestLeaveRotation(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.CoreTimeout = 20 * time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := (&netListenConfig{}).listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	base := "http://" + ln.Addr().String()
	client := &http.Client{Timeout: 30 * time.Second}

	c := e.start("Ada")
	if a := rawSend(client, base, c, "before"); a.err != nil || a.code != 200 || a.sc != 0 || a.closing {
		t.Fatalf("send in rotation: %+v", a)
	}
	stream, err := client.Get(base + "/genesys/2/chat/customer-support/" + c.id + "/events?userId=" + c.user + "&secureKey=" + c.key)
	if err != nil || stream.StatusCode != 200 {
		t.Fatalf("events: %v %v", stream, err)
	}
	defer stream.Body.Close()
	ended := make(chan struct{})
	go func() { // ends when the stream does
		defer close(ended)
		_, _ = io.Copy(io.Discard, stream.Body)
	}()

	// A send in flight: the core answers Unavailable for ever, the chat
	// client retries within core-timeout (20 s).
	e.core.setFailNext(1 << 30)
	inflight := make(chan sendAnswer, 1)
	go func() { inflight <- rawSend(client, base, c, "in flight") }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.core.mu.Lock()
		n := e.core.sendCalls
		e.core.mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the send never reached the core (%d attempts)", n)
		}
		time.Sleep(5 * time.Millisecond)
	}

	left := time.Now()
	e.srv.LeaveRotation("test: sidecar gone")
	select {
	case a := <-inflight:
		if a.err != nil || a.code != http.StatusServiceUnavailable || a.sc != statusRetry || !a.closing {
			t.Errorf("send in flight at the leave: %+v, want 503, statusCode %d, close", a, statusRetry)
		}
		t.Logf("send in flight answered %v after the leave", time.Since(left).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("the send in flight still waits on the core 5 s after the leave")
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the push channel is still open 5 s after the leave")
	}

	e.core.mu.Lock()
	before := e.core.sendCalls
	e.core.mu.Unlock()
	// The leave turned keep-alives off and closes idle connections; a
	// pooled one may be closing as the next request takes it (a POST is not
	// retried on it). A client that lost its connection opens a new one.
	client.CloseIdleConnections()
	start := time.Now()
	if a := rawSend(client, base, c, "while out"); a.err != nil || a.code != http.StatusServiceUnavailable || a.sc != statusRetry || !a.closing {
		t.Errorf("send while out: %+v, want 503, statusCode %d, close", a, statusRetry)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("send while out answered after %v, want at once", d)
	}
	e.core.mu.Lock()
	after := e.core.sendCalls
	e.core.mu.Unlock()
	if after != before {
		t.Errorf("send while out reached the core (%d attempts)", after-before)
	}
	res, err := client.Get(base + "/genesys/2/chat/customer-support/" + c.id + "/events?userId=" + c.user + "&secureKey=" + c.key)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("push channel opened while out: HTTP %d, want 503", res.StatusCode)
	}
	if v := gauge(t, e.srv.metrics.inRotation); v != 0 {
		t.Errorf("hachat_webapi_in_rotation %v while out, want 0", v)
	}
	if v := counterValue(t, e.srv.metrics.sseEnded); v != 1 {
		t.Errorf("hachat_webapi_push_channels_reset_total %v, want 1", v)
	}
	e.srv.LeaveRotation("again") // out already: nothing changes
	if v := counterValue(t, e.srv.metrics.sseEnded); v != 1 {
		t.Errorf("a second leave counted again: %v", v)
	}

	e.core.setFailNext(0)
	e.srv.ReturnToRotation()
	if a := rawSend(client, base, c, "back"); a.err != nil || a.code != 200 || a.sc != 0 || a.closing {
		t.Errorf("send back in rotation: %+v", a)
	}
	if v := gauge(t, e.srv.metrics.inRotation); v != 1 {
		t.Errorf("hachat_webapi_in_rotation %v back in rotation, want 1", v)
	}
}

// gauge reads a gauge.
func gauge(t *testing.T, g interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
