package webbench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestFormClientRequest checks that a post arrives as net/http's client
// would send it: method, path with its query, Host, Content-Type and the
// form, the answer's status and body back, on one kept-alive connection.
func TestFormClientRequest(t *testing.T) {
	hs, fc, conns := startFormServer(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := r.ParseForm(); err != nil {
			t.Error(err)
		}
		fmt.Fprintf(w, "%s %s %s %s %s", r.Method, r.URL.RequestURI(), r.Host, r.Header.Get("Content-Type"), body)
	})
	host := strings.TrimPrefix(hs.URL, "http://")
	for i := range 3 {
		status, body, err := fc.post(t.Context(), "/a/b%2Fc/send?x=1", []byte("userId=u+1&n="+fmt.Sprint(i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("POST /a/b%%2Fc/send?x=1 %s application/x-www-form-urlencoded userId=u+1&n=%d", host, i)
		if status != http.StatusOK || string(body) != want {
			t.Fatalf("answer %d %q, want 200 %q", status, body, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 3 posts, want 1 kept alive", n)
	}
}

// TestReadAnswer checks the answers the client reads: Content-Length,
// chunked (with an extension and a trailer), a body to the end of the
// connection, an interim 100, Connection: close, HTTP/1.0, a body over the
// limit, and broken answers.
func TestReadAnswer(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		status   int
		body     string
		keep     bool
		err      bool
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello", 200, "hello", true, false},
		{"lower-case header", "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno", 503, "no", true, false},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n", 200, "abc0123456789", true, false},
		{"to the end", "HTTP/1.1 200 OK\r\n\r\nall of it", 200, "all of it", false, false},
		{"interim", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", true, false},
		{"close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, "ok", false, false},
		{"http/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", false, false},
		{"http/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 200, "ok", true, false},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", 204, "", true, false},
		{"over the limit", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("x", 100), 0, "", false, true},
		{"chunks over the limit", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + strings.Repeat("x", 64) + "\r\n0\r\n\r\n", 200, "", false, true},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 200, "", false, true},
		{"closed before an answer", "", 0, "", false, true},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", 0, "", false, true},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 200, "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, keep, err := readAnswer(bufio.NewReader(strings.NewReader(tc.in)), nil, 32)
			if (err != nil) != tc.err {
				t.Fatalf("err %v, want error %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if status != tc.status || string(body) != tc.body || keep != tc.keep {
				t.Errorf("got %d %q keep %v, want %d %q keep %v", status, body, keep, tc.status, tc.body, tc.keep)
			}
		})
	}
}

// TestFormClientConnectionEnds checks that a connection the server closes
// after its answer (Connection: close) is not reused, and that a
// connection broken under a request fails it as a transport failure, the
// kind the bench resends, after which the next post works on a new one.
func TestFormClientConnectionEnds(t *testing.T) {
	var n atomic.Int64
	_, fc, conns := startFormServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/close":
			w.Header().Set("Connection", "close")
		case "/hijack":
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		fmt.Fprint(w, n.Add(1))
	})
	post := func(path string) error {
		_, _, err := fc.post(t.Context(), path, nil, nil)
		return err
	}
	if err := post("/close"); err != nil {
		t.Fatal(err)
	}
	if err := post("/"); err != nil {
		t.Fatal(err)
	}
	if c := conns.Load(); c != 2 {
		t.Errorf("%d connections, want 2: one closed by the server, one new", c)
	}
	if err := post("/hijack"); !errors.Is(err, errTransport) {
		t.Errorf("broken connection: %v, want errTransport", err)
	}
	if err := post("/"); err != nil {
		t.Fatalf("post after a broken connection: %v", err)
	}
	if c := conns.Load(); c != 3 {
		t.Errorf("%d connections, want 3", c)
	}
}

// startFormServer starts a test server with handler, counting the
// connections it accepts, and a formClient to it; both end with the test.
func startFormServer(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *formClient, *atomic.Int64) {
	t.Helper()
	conns := new(atomic.Int64)
	hs := httptest.NewUnstartedServer(handler)
	hs.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	hs.Start()
	t.Cleanup(hs.Close)
	fc, err := newFormClient(hs.URL, 5*time.Second, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fc.close)
	return hs, fc, conns
}
