package interaction

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hachat/hachat/sse"
)

// flushCounter counts the flushes that reach the response.
type flushCounter struct {
	*httptest.ResponseRecorder
	flushes int
}

func (f *flushCounter) Flush() { f.flushes++; f.ResponseRecorder.Flush() }

// TestWriteReady: the events waiting on an agent's channel go out with the
// one received, in order, in one flush, up to maxBurst; a closed channel
// ends the burst after what it held.
func TestWriteReady(t *testing.T) {
	for _, tc := range []struct {
		name    string
		waiting int
		close   bool
		events  int // written by the call
		left    int // still on the channel
	}{
		{"alone", 0, false, 1, 0},
		{"three waiting", 3, false, 4, 0},
		{"closed after two", 2, true, 3, 0},
		{"more than a burst", maxBurst + 10, false, maxBurst, 11},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &flushCounter{ResponseRecorder: httptest.NewRecorder()}
			out, err := sse.Start(rec, sse.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer out.Stop()
			rec.Body.Reset()
			rec.flushes = 0
			ch := make(chan sseMsg, tc.waiting+1)
			for i := range tc.waiting {
				ch <- sseMsg{event: "e", data: []byte{'a' + byte(i%26)}}
			}
			if tc.close {
				close(ch)
			}
			if err := writeReady(out, ch, sseMsg{event: "first", data: []byte("0")}); err != nil {
				t.Fatal(err)
			}
			body := rec.Body.String()
			if n := strings.Count(body, "\n\n"); n != tc.events {
				t.Errorf("%d events written, want %d", n, tc.events)
			}
			if !strings.HasPrefix(body, "event: first\ndata: 0\n\n") {
				t.Errorf("burst does not start with the event received: %q", body[:min(len(body), 40)])
			}
			if tc.waiting > 1 && !strings.Contains(body, "data: a\n\nevent: e\ndata: b\n\n") {
				t.Errorf("waiting events out of order: %q", body[:min(len(body), 80)])
			}
			if rec.flushes != 1 {
				t.Errorf("%d flushes for one burst, want 1", rec.flushes)
			}
			if len(ch) != tc.left {
				t.Errorf("%d events left on the channel, want %d", len(ch), tc.left)
			}
		})
	}
}
