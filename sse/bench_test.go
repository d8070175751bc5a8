package sse

import (
	"net/http"
	"testing"
	"time"
)

// discard is a ResponseWriter that keeps nothing and supports what a Writer
// asks of a real connection (Flush, SetWriteDeadline), so that a benchmark
// measures the Writer alone.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header              { return d.h }
func (d *discard) Write(b []byte) (int, error)      { return len(b), nil }
func (d *discard) WriteHeader(int)                  {}
func (d *discard) Flush()                           {}
func (d *discard) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkEvent measures one event written and flushed on a busy stream
// (the customer's message on its push channel): framing, the write
// deadline's check and the heartbeat's bookkeeping.
func BenchmarkEvent(b *testing.B) {
	w, err := Start(&discard{h: http.Header{}}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	data := []byte(`{"index":7,"type":"Message","text":"hello"}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Event("7", "", data); err != nil {
			b.Fatal(err)
		}
	}
}
