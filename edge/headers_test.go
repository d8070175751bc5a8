package edge

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// headerWriter is a ResponseWriter that keeps only its header map.
type headerWriter struct{ h http.Header }

func (w *headerWriter) Header() http.Header         { return w.h }
func (w *headerWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *headerWriter) WriteHeader(int)             {}

// TestSecurityHeadersShared: the headers cost an answer no allocation (their
// values are shared), and sharing them leaks nothing: a handler that adds
// to one for its answer changes no other answer.
func TestSecurityHeadersShared(t *testing.T) {
	added := false
	h := SecurityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/add" {
			w.Header().Add("Content-Security-Policy", "report-to x")
			added = true
		}
	}), "")
	first := httptest.NewRecorder()
	h.ServeHTTP(first, httptest.NewRequest(http.MethodGet, "/add", nil))
	if got := first.Header().Values("Content-Security-Policy"); !added || len(got) != 2 || got[0] != DefaultCSP {
		t.Fatalf("answer that added a policy: %q", got)
	}
	next := httptest.NewRecorder()
	h.ServeHTTP(next, httptest.NewRequest(http.MethodGet, "/", nil))
	want := map[string]string{"Content-Security-Policy": DefaultCSP, "X-Frame-Options": "DENY",
		"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
	for k, v := range want {
		if got := next.Header().Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}

	w := &headerWriter{h: http.Header{}}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if n := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, r) }); n != 0 {
		t.Errorf("%v allocations per answer, want none", n)
	}
}

// TestCORSVaryShared: a same-site request (no Origin) costs CORS no
// allocation, and an answer that had a Vary of its own keeps it beside
// Origin.
func TestCORSVaryShared(t *testing.T) {
	o, err := ParseOrigins("https://a.example")
	if err != nil {
		t.Fatal(err)
	}
	h := o.CORS(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), func(http.ResponseWriter, *http.Request) {})
	w := &headerWriter{h: http.Header{}}
	r := httptest.NewRequest(http.MethodPost, "/genesys/2/chat/x", nil)
	h.ServeHTTP(w, r)
	if got := w.h.Values("Vary"); len(got) != 1 || got[0] != "Origin" {
		t.Fatalf("Vary %q, want Origin", got)
	}
	if n := testing.AllocsPerRun(100, func() {
		delete(w.h, "Vary")
		h.ServeHTTP(w, r)
	}); n != 0 {
		t.Errorf("%v allocations per same-site answer, want none", n)
	}
	w.h = http.Header{"Vary": {"Accept-Encoding"}}
	h.ServeHTTP(w, r)
	if got := w.h.Values("Vary"); len(got) != 2 || got[0] != "Accept-Encoding" || got[1] != "Origin" {
		t.Errorf("Vary %q, want Accept-Encoding and Origin", got)
	}
}
