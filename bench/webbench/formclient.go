package webbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// formClient posts forms to one HTTP/1.1 server (webapi) over kept-alive
// connections, one request at a time on each: the customers' sends,
// thousands a second. net/http's client costs every request two goroutine
// hand-offs (its connection's write and read loops), a Request, a Response
// and their header maps; the load generator shares its cores with the
// cluster it measures, so that CPU is taken from the cluster's messages/s.
// This client writes a request in one write and reads the answer in place:
// the status, a Content-Length or chunked body, Connection: close.
//
// A request is bounded by the client's timeout, not by its context, which
// is only checked before it starts: webapi answers every call within its
// core-timeout.
type formClient struct {
	addr    string        // host:port dialled
	host    string        // the Host header
	timeout time.Duration // bounds one request: dial, write and answer
	maxBody int           // the longest answer body read

	mu     sync.Mutex
	idle   []*formConn // kept-alive connections, the most recently used last
	closed bool
}

// formConn is one kept-alive connection of a formClient.
type formConn struct {
	c        net.Conn
	br       *bufio.Reader
	wbuf     []byte    // the request being written
	deadline time.Time // the connection's read and write deadline
	used     time.Time // when its last answer was read
}

// maxIdleAge is how long a connection may sit idle and still be reused:
// well under the server's idle timeout (webapi's is 2 minutes), so that a
// request never goes out on a connection the server is closing.
const maxIdleAge = 30 * time.Second

// errTransport marks a failure of the connection (dial, write, a broken or
// malformed answer), as opposed to an answer.
var errTransport = errors.New("transport")

// newFormClient makes a client of the server at baseURL (http://host:port).
func newFormClient(baseURL string, timeout time.Duration, maxBody int) (*formClient, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("form client: %w", err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("form client: %q is not an http://host[:port] URL", baseURL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &formClient{addr: addr, host: u.Host, timeout: timeout, maxBody: maxBody}, nil
}

// close closes the idle connections; those in use are closed when their
// request ends.
func (fc *formClient) close() {
	fc.mu.Lock()
	idle := fc.idle
	fc.idle, fc.closed = nil, true
	fc.mu.Unlock()
	for _, c := range idle {
		c.c.Close()
	}
}

// get returns an idle connection, or dials one.
func (fc *formClient) get(ctx context.Context) (*formConn, error) {
	now := time.Now()
	fc.mu.Lock()
	for len(fc.idle) > 0 {
		c := fc.idle[len(fc.idle)-1]
		fc.idle = fc.idle[:len(fc.idle)-1]
		if now.Sub(c.used) < maxIdleAge {
			fc.mu.Unlock()
			return c, nil
		}
		c.c.Close()
	}
	fc.mu.Unlock()
	d := net.Dialer{Timeout: fc.timeout}
	c, err := d.DialContext(ctx, "tcp", fc.addr)
	if err != nil {
		return nil, err
	}
	return &formConn{c: c, br: bufio.NewReaderSize(c, 4096)}, nil
}

// put keeps c for the next request.
func (fc *formClient) put(c *formConn) {
	c.used = time.Now()
	fc.mu.Lock()
	if fc.closed {
		fc.mu.Unlock()
		c.c.Close()
		return
	}
	fc.idle = append(fc.idle, c)
	fc.mu.Unlock()
}

// post sends form to path (already escaped, with its query if any) as
// application/x-www-form-urlencoded and appends the answer's body to dst.
// It returns the HTTP status and the body; a failure of the connection
// wraps errTransport.
func (fc *formClient) post(ctx context.Context, path string, form, dst []byte) (status int, body []byte, err error) {
	if err := ctx.Err(); err != nil {
		return 0, dst, err
	}
	c, err := fc.get(ctx)
	if err != nil {
		return 0, dst, fmt.Errorf("%w: %w", errTransport, err)
	}
	status, body, keep, err := c.roundTrip(fc, path, form, dst)
	if err != nil {
		c.c.Close()
		return 0, body, fmt.Errorf("%w: %w", errTransport, err)
	}
	if keep {
		fc.put(c)
	} else {
		c.c.Close()
	}
	return status, body, nil
}

// roundTrip writes one request and reads its answer; keep is false when
// the connection cannot carry another.
func (c *formConn) roundTrip(fc *formClient, path string, form, dst []byte) (status int, body []byte, keep bool, err error) {
	// The deadline moves only when less than the timeout is left: each
	// request gets between the timeout and 1.25 times it, without a
	// deadline call per request.
	if now := time.Now(); c.deadline.Sub(now) < fc.timeout {
		c.deadline = now.Add(fc.timeout + fc.timeout/4)
		if err := c.c.SetDeadline(c.deadline); err != nil {
			return 0, dst, false, err
		}
	}
	w := append(c.wbuf[:0], "POST "...)
	w = append(w, path...)
	w = append(w, " HTTP/1.1\r\nHost: "...)
	w = append(w, fc.host...)
	w = append(w, "\r\nUser-Agent: hachat-bench\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: "...)
	w = strconv.AppendInt(w, int64(len(form)), 10)
	w = append(w, "\r\n\r\n"...)
	w = append(w, form...)
	c.wbuf = w
	if _, err := c.c.Write(w); err != nil {
		return 0, dst, false, err
	}
	return readAnswer(c.br, dst, fc.maxBody)
}

// readAnswer reads one HTTP/1.1 answer from br (1xx interim answers
// skipped) and appends its body to dst, at most maxBody bytes of it.
func readAnswer(br *bufio.Reader, dst []byte, maxBody int) (status int, body []byte, keep bool, err error) {
	for {
		line, err := readLine(br)
		if err != nil {
			return 0, dst, false, err
		}
		// HTTP/1.x NNN reason
		if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
			return 0, dst, false, fmt.Errorf("malformed status line %q", line)
		}
		status, err = strconv.Atoi(string(line[9:12]))
		if err != nil || status < 100 {
			return 0, dst, false, fmt.Errorf("malformed status line %q", line)
		}
		keep = line[7] == '1' // HTTP/1.1 keeps the connection unless told
		length, chunked := -1, false
		for {
			h, err := readLine(br)
			if err != nil {
				return 0, dst, false, err
			}
			if len(h) == 0 {
				break
			}
			name, value, ok := bytes.Cut(h, []byte(":"))
			if !ok {
				return 0, dst, false, fmt.Errorf("malformed header %q", h)
			}
			value = bytes.TrimSpace(value)
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				n, err := strconv.Atoi(string(value))
				if err != nil || n < 0 {
					return 0, dst, false, fmt.Errorf("malformed Content-Length %q", value)
				}
				length = n
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				chunked = bytes.EqualFold(value, []byte("chunked"))
				if !chunked {
					return 0, dst, false, fmt.Errorf("unsupported Transfer-Encoding %q", value)
				}
			case bytes.EqualFold(name, []byte("Connection")):
				if bytes.EqualFold(value, []byte("close")) {
					keep = false
				} else if bytes.EqualFold(value, []byte("keep-alive")) {
					keep = true
				}
			}
		}
		if status < 200 && status != 101 {
			continue // an interim answer; the real one follows
		}
		switch {
		case status == 204 || status == 304:
			return status, dst, keep, nil
		case chunked:
			body, err = readChunked(br, dst, maxBody)
			return status, body, keep && err == nil, err
		case length >= 0:
			if length > maxBody {
				return 0, dst, false, fmt.Errorf("answer body of %d bytes, over %d", length, maxBody)
			}
			body = grow(dst, length)
			_, err = io.ReadFull(br, body[len(dst):])
			return status, body, keep && err == nil, err
		default: // the body runs to the end of the connection
			body, err = readAll(br, dst, maxBody)
			return status, body, false, err
		}
	}
}

// readChunked reads a chunked body (and its trailer) and appends it to dst.
func readChunked(br *bufio.Reader, dst []byte, maxBody int) ([]byte, error) {
	for {
		line, err := readLine(br)
		if err != nil {
			return dst, err
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // a chunk extension
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 31)
		if err != nil {
			return dst, fmt.Errorf("malformed chunk size %q", line)
		}
		if n == 0 {
			for { // the trailer, up to its empty line
				line, err := readLine(br)
				if err != nil {
					return dst, err
				}
				if len(line) == 0 {
					return dst, nil
				}
			}
		}
		if len(dst)+int(n) > maxBody {
			return dst, fmt.Errorf("answer body over %d bytes", maxBody)
		}
		start := len(dst)
		dst = grow(dst, int(n))
		if _, err := io.ReadFull(br, dst[start:]); err != nil {
			return dst, err
		}
		if line, err := readLine(br); err != nil || len(line) != 0 {
			return dst, fmt.Errorf("chunk not followed by CRLF: %w", err)
		}
	}
}

// readAll appends everything up to the end of br to dst.
func readAll(br *bufio.Reader, dst []byte, maxBody int) ([]byte, error) {
	for {
		if len(dst) >= maxBody {
			return dst, fmt.Errorf("answer body over %d bytes", maxBody)
		}
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := br.Read(dst[len(dst):min(cap(dst), maxBody)])
		dst = dst[:len(dst)+n]
		if errors.Is(err, io.EOF) {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}

// readLine reads one line without its CRLF (or LF); the slice is valid
// until br's next read.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// grow extends b by n bytes (of unspecified content).
func grow(b []byte, n int) []byte {
	if len(b)+n <= cap(b) {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, max(2*cap(b), len(b)+n))
	copy(nb, b)
	return nb
}
