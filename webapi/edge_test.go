package webapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// clientFrom returns an HTTP client whose connections come from the
// loopback address ip (127.0.0.2 is another client than 127.0.0.1).
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// rawAnswer is an HTTP answer with its decoded GMS body.
type rawAnswer struct {
	code   int
	header http.Header
	body   response
	raw    string
}

// do sends one request with the given headers.
func (e *env) do(hc *http.Client, method, path, contentType string, body []byte, header map[string]string) rawAnswer {
	e.t.Helper()
	req, err := http.NewRequest(method, e.http.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := hc.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	a := rawAnswer{code: res.StatusCode, header: res.Header, raw: string(b)}
	_ = json.Unmarshal(b, &a.body)
	return a
}

const startPath = "/genesys/2/chat/customer-support"

var startBody = []byte(`{"nickname":"Ada"}`)

// checkLimited asserts a 429 in the GMS error shape with a Retry-After of
// at least one second.
func checkLimited(t *testing.T, a rawAnswer, advice string) {
	t.Helper()
	if a.code != http.StatusTooManyRequests || a.body.StatusCode != statusRetry || len(a.body.Errors) != 1 ||
		a.body.Errors[0].Code != codeTooMany || !strings.Contains(a.body.Errors[0].Advice, advice) {
		t.Fatalf("got %d %s, want 429 statusCode 1 code 106 advising %q", a.code, a.raw, advice)
	}
	if n, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || n < 1 {
		t.Fatalf("Retry-After %q, want whole seconds >= 1", a.header.Get("Retry-After"))
	}
	if !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
		t.Fatalf("content type %q", a.header.Get("Content-Type"))
	}
}

func TestStartLimitPerClient(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClientStartRate, c.ClientStartBurst = 0.01, 3 })
	a := e.http.Client()
	for i := range 3 {
		if r := e.do(a, "POST", startPath, "application/json", startBody, nil); r.code != 200 || r.body.ChatID == "" {
			t.Fatalf("start %d: %d %s", i+1, r.code, r.raw)
		}
	}
	r := e.do(a, "POST", startPath, "application/json", startBody, nil)
	checkLimited(t, r, "from this address")
	if got := r.header.Get("Retry-After"); got != "100" {
		t.Errorf("Retry-After = %s, want 100 (one start per 100 s)", got)
	}
	if n := e.core.sessionCount(); n != 3 {
		t.Fatalf("the core started %d sessions, want 3: a refused start must not reach it", n)
	}
	// Another client address still starts chats.
	if r := e.do(clientFrom("127.0.0.2"), "POST", startPath, "application/json", startBody, nil); r.code != 200 || r.body.ChatID == "" {
		t.Fatalf("start from another address: %d %s", r.code, r.raw)
	}
}

func TestStartLimitGlobal(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.StartRate, c.StartBurst = 0.01, 2 })
	if r := e.do(clientFrom("127.0.0.2"), "POST", startPath, "application/json", startBody, nil); r.code != 200 {
		t.Fatalf("start 1: %d %s", r.code, r.raw)
	}
	if r := e.do(clientFrom("127.0.0.3"), "POST", startPath, "application/json", startBody, nil); r.code != 200 {
		t.Fatalf("start 2: %d %s", r.code, r.raw)
	}
	checkLimited(t, e.do(clientFrom("127.0.0.4"), "POST", startPath, "application/json", startBody, nil), "right now")
	if n := e.core.sessionCount(); n != 2 {
		t.Fatalf("the core started %d sessions, want 2", n)
	}
}

// TestStartLimitBehindProxy: behind a trusted load balancer each
// X-Forwarded-For client has its own limit; from an untrusted peer the
// header is ignored, so forging it does not escape the limit.
func TestStartLimitBehindProxy(t *testing.T) {
	for _, trusted := range []bool{true, false} {
		e := newEnv(t, func(c *Config) {
			c.ClientStartRate, c.ClientStartBurst = 0.01, 1
			if trusted {
				c.TrustedProxies = "127.0.0.1"
			}
		})
		hc := e.http.Client()
		r1 := e.do(hc, "POST", startPath, "application/json", startBody, map[string]string{"X-Forwarded-For": "203.0.113.1"})
		r2 := e.do(hc, "POST", startPath, "application/json", startBody, map[string]string{"X-Forwarded-For": "203.0.113.2"})
		if r1.code != 200 {
			t.Fatalf("trusted=%v: first start %d %s", trusted, r1.code, r1.raw)
		}
		if trusted && r2.code != 200 {
			t.Fatalf("behind a trusted proxy, another forwarded client was limited: %d %s", r2.code, r2.raw)
		}
		if !trusted {
			checkLimited(t, r2, "from this address")
		}
	}
}

// TestSecurityHeadersEveryPage: the page, its static files, the API (success,
// error, unknown route, preflight), the push channel, /metrics, /healthz
// and a 404 all carry the security headers.
func TestSecurityHeadersEveryPage(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	hc := e.http.Client()
	for _, req := range []struct{ method, path string }{
		{"GET", "/"}, {"GET", "/static/app.js"}, {"GET", "/static/style.css"}, {"GET", "/healthz"}, {"GET", "/metrics"},
		{"GET", "/nope"}, {"POST", startPath}, {"POST", startPath + "/" + c.id + "/send"}, {"GET", "/genesys/2/nope"},
		{"GET", startPath + "/unknown-chat/events?userId=u&secureKey=k"}, {"OPTIONS", startPath},
	} {
		a := e.do(hc, req.method, req.path, "application/json", []byte(`{"nickname":"x"}`), nil)
		h := a.header
		if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s %s (%d): Content-Security-Policy %q", req.method, req.path, a.code, csp)
		}
		if h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s %s (%d): X-Frame-Options %q, X-Content-Type-Options %q", req.method, req.path, a.code,
				h.Get("X-Frame-Options"), h.Get("X-Content-Type-Options"))
		}
	}
}

func TestCORSAllowList(t *testing.T) {
	const shop = "https://shop.example.com"
	e := newEnv(t, func(c *Config) { c.AllowedOrigins = shop + ",https://www.example.com" })
	hc := e.http.Client()

	// A listed origin: the start works and its page may read the answer.
	a := e.do(hc, "POST", startPath, "application/json", startBody, map[string]string{"Origin": shop})
	if a.code != 200 || a.header.Get("Access-Control-Allow-Origin") != shop || a.body.ChatID == "" {
		t.Fatalf("listed origin: %d ACAO %q %s", a.code, a.header.Get("Access-Control-Allow-Origin"), a.raw)
	}
	p := e.do(hc, "OPTIONS", startPath+"/"+a.body.ChatID+"/send", "", nil,
		map[string]string{"Origin": shop, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, apikey"})
	// GMS widgets send an apikey header: the preflight must allow it.
	if p.code != http.StatusNoContent || p.header.Get("Access-Control-Allow-Origin") != shop ||
		!strings.Contains(p.header.Get("Access-Control-Allow-Methods"), "POST") || !strings.Contains(p.header.Get("Access-Control-Allow-Headers"), "Content-Type") ||
		!strings.Contains(p.header.Get("Access-Control-Allow-Headers"), "apikey") {
		t.Fatalf("listed preflight: %d %v", p.code, p.header)
	}

	// Another origin: refused, no CORS header, and nothing reaches the core.
	before := e.core.sessionCount()
	for _, origin := range []string{"https://evil.example", "https://shop.example.com.evil.example", "null", "http://shop.example.com"} {
		r := e.do(hc, "POST", startPath, "application/json", startBody, map[string]string{"Origin": origin})
		if r.code != http.StatusForbidden || r.header.Get("Access-Control-Allow-Origin") != "" || len(r.body.Errors) != 1 ||
			r.body.Errors[0].Code != codeOrigin || r.body.StatusCode != statusUnrecovered {
			t.Errorf("origin %s: %d ACAO %q %s, want 403 code 110 without ACAO", origin, r.code, r.header.Get("Access-Control-Allow-Origin"), r.raw)
		}
		pf := e.do(hc, "OPTIONS", startPath, "", nil, map[string]string{"Origin": origin, "Access-Control-Request-Method": "POST"})
		if pf.code != http.StatusForbidden || pf.header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("preflight from %s: %d ACAO %q, want 403 without ACAO", origin, pf.code, pf.header.Get("Access-Control-Allow-Origin"))
		}
	}
	if n := e.core.sessionCount(); n != before {
		t.Fatalf("refused origins started %d sessions", n-before)
	}

	// The server's own page (same origin) and non-browser clients (no
	// Origin) need no list and get no CORS header.
	own := "http://" + strings.TrimPrefix(e.http.URL, "http://")
	for _, h := range []map[string]string{{"Origin": own}, nil} {
		r := e.do(hc, "POST", startPath, "application/json", startBody, h)
		if r.code != 200 || r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("origin %v: %d ACAO %q", h, r.code, r.header.Get("Access-Control-Allow-Origin"))
		}
	}
}

// TestCORSDefaultRefusesEveryOtherSite: with no allowed-origins, no other
// site may call the API.
func TestCORSDefaultRefusesEveryOtherSite(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(e.http.Client(), "POST", startPath, "application/json", startBody, map[string]string{"Origin": "https://www.example.com"})
	if r.code != http.StatusForbidden || r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("%d %v", r.code, r.header)
	}
}

// TestTextRules: invalid UTF-8 and control characters are refused with 400 /
// code 102 on the JSON path as on the form path; tab, newline and a valid
// surrogate pair pass; CR LF becomes LF.
func TestTextRules(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	hc := e.http.Client()
	send := startPath + "/" + c.id + "/send"
	auth := `"userId":"` + c.user + `","secureKey":"` + c.key + `"`
	form := "userId=" + c.user + "&secureKey=" + c.key
	refused := []struct {
		name, path, ctype string
		body              []byte
	}{
		{"json start, invalid UTF-8 nickname", startPath, "application/json", []byte("{\"nickname\":\"Ada\xff\"}")},
		{"json start, invalid UTF-8 in an unknown member", startPath, "application/json", []byte("{\"nickname\":\"Ada\",\"x\":\"\xc3\"}")},
		{"json send, invalid UTF-8 message", send, "application/json", []byte("{" + auth + ",\"message\":\"hi \xed\xa0\x80\"}")},
		{"json without content type, invalid UTF-8", send, "", []byte("{" + auth + ",\"message\":\"\xfe\"}")},
		{"json send, lone high surrogate escape", send, "application/json", []byte("{" + auth + `,"message":"a\ud800b"}`)},
		{"json send, lone low surrogate escape", send, "application/json", []byte("{" + auth + `,"message":"\udc00"}`)},
		{"json send, BEL escape", send, "application/json", []byte("{" + auth + `,"message":"ring\u0007"}`)},
		{"json send, NUL escape", send, "application/json", []byte("{" + auth + `,"message":"\u0000"}`)},
		{"json send, lone CR", send, "application/json", []byte("{" + auth + `,"message":"a\rb"}`)},
		{"json send, escape ESC", send, "application/json", []byte("{" + auth + `,"message":"\u001b[2J"}`)},
		{"json send, C1 control", send, "application/json", []byte("{" + auth + `,"message":"\u0085"}`)},
		{"json send, DEL", send, "application/json", []byte("{" + auth + `,"message":"\u007f"}`)},
		{"json start, control in userData", startPath, "application/json", []byte(`{"nickname":"Ada","userData":{"k":"v\u0008"}}`)},
		{"json start, control in a userData key", startPath, "application/json", []byte(`{"nickname":"Ada","userData":{"k\u0001":"v"}}`)},
		{"form send, BEL", send, "application/x-www-form-urlencoded", []byte(form + "&message=ring%07")},
		{"form send, invalid UTF-8", send, "application/x-www-form-urlencoded", []byte(form + "&message=%ff")},
		{"form start, ESC in nickname", startPath, "application/x-www-form-urlencoded", []byte("nickname=%1b")},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			before := e.core.eventCount(c.id)
			r := e.do(hc, "POST", tc.path, tc.ctype, tc.body, nil)
			if r.code != http.StatusBadRequest || r.body.StatusCode != statusUnrecovered || len(r.body.Errors) != 1 ||
				r.body.Errors[0].Code != codeInvalidParam || r.body.Errors[0].Advice == "" {
				t.Fatalf("got %d %s, want 400 statusCode 2 code 102", r.code, r.raw)
			}
			if e.core.eventCount(c.id) != before {
				t.Fatal("a refused send reached the core")
			}
		})
	}
	accepted := []struct{ name, body, want string }{
		{"tab and newline", `"message":"a\tb\nc"`, "a\tb\nc"},
		{"CR LF becomes LF", `"message":"line 1\r\nline 2"`, "line 1\nline 2"},
		{"surrogate pair", `"message":"\ud83d\ude00 ok"`, "\U0001F600 ok"},
		{"raw UTF-8", `"message":"Grüße, 你好"`, "Grüße, 你好"},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(hc, "POST", send, "application/json", []byte("{"+auth+","+tc.body+"}"), nil)
			if r.code != 200 {
				t.Fatalf("got %d %s", r.code, r.raw)
			}
			evs := e.core.events(c.id)
			last := evs[len(evs)-1]
			if last.GetKind() != chatpb.EventKind_EVENT_KIND_MESSAGE || last.GetText() != tc.want {
				t.Fatalf("the core got %q, want %q", last.GetText(), tc.want)
			}
		})
	}
	// The form path normalises CR LF the same way.
	r := e.do(hc, "POST", send, "application/x-www-form-urlencoded", []byte(form+"&message=a%0D%0Ab"), nil)
	if evs := e.core.events(c.id); r.code != 200 || evs[len(evs)-1].GetText() != "a\nb" {
		t.Fatalf("form CR LF: %d %s", r.code, r.raw)
	}
}
