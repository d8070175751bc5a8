package e2e

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// customerFrom is a customer API client whose connections come from the
// loopback address ip: another client address than 127.0.0.1 to webapi.
func customerFrom(c *harness.Cluster, ip string) *harness.GMS {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &harness.GMS{Base: c.WebAPIURL(), Service: c.Service(),
		HTTP: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}}
}

// TestEdge runs the abuse defences of webapi against real processes: a
// flood of chat starts from one client gets 429 (GMS shape, Retry-After)
// while another client still starts chats; the CORS allow-list; invalid
// UTF-8 and control characters in a JSON body get 400 / code 102; every
// page carries the security headers; and UCS reads need the reader token.
func TestEdge(t *testing.T) {
	const shop = "https://shop.example.com"
	c := harness.StartCluster(t, harness.Options{StartLimits: true, Tune: func(p demo.Plan) demo.Plan {
		return p.WithKind(demo.KindWebAPI, "--client-start-rate=0.01", "--client-start-burst=5", "--allowed-origins="+shop)
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	t.Run("flood from one client gets 429, another client starts", func(t *testing.T) {
		flood := c.Customer()
		ok, limited := 0, 0
		for i := range 40 {
			_, r, err := flood.Start(ctx, url.Values{"nickname": {"flood " + strconv.Itoa(i)}})
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case r.OK():
				ok++
			case r.HTTPStatus == http.StatusTooManyRequests && r.StatusCode == 1 && len(r.Errors) == 1 && r.Errors[0].Code == 106:
				limited++
			default:
				t.Fatalf("start %d: unexpected answer %d %s", i, r.HTTPStatus, r.Raw)
			}
		}
		if ok != 5 || limited != 35 {
			t.Fatalf("flood: %d started, %d limited; want 5 and 35", ok, limited)
		}
		other := customerFrom(c, "127.0.0.2")
		chat, r, err := other.Start(ctx, url.Values{"nickname": {"Ada"}})
		if err != nil || !r.OK() {
			t.Fatalf("another client could not start a chat: %v %s", err, r.Raw)
		}
		if r, err := chat.Send(ctx, "hello", ""); err != nil || !r.OK() {
			t.Fatalf("send: %v %+v", err, r)
		}
		// Retry-After on the wire.
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.WebAPIURL()+"/genesys/2/chat/"+c.Service(), strings.NewReader("nickname=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if n, err := strconv.Atoi(res.Header.Get("Retry-After")); res.StatusCode != 429 || err != nil || n < 1 {
			t.Fatalf("flood answer %d Retry-After %q", res.StatusCode, res.Header.Get("Retry-After"))
		}
	})

	gms := customerFrom(c, "127.0.0.3")
	chat, r, err := gms.Start(ctx, url.Values{"nickname": {"Bea"}})
	if err != nil || !r.OK() {
		t.Fatalf("start: %v %s", err, r.Raw)
	}

	t.Run("CORS allow-list", func(t *testing.T) {
		hc := gms.HTTP
		post := func(origin, method string, extra map[string]string) *http.Response {
			req, _ := http.NewRequestWithContext(ctx, method, c.WebAPIURL()+"/genesys/2/chat/"+c.Service()+"/"+chat.ChatID+"/refresh",
				strings.NewReader(url.Values{"userId": {chat.UserID}, "secureKey": {chat.SecureKey}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", origin)
			for k, v := range extra {
				req.Header.Set(k, v)
			}
			res, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			return res
		}
		if res := post(shop, "POST", nil); res.StatusCode != 200 || res.Header.Get("Access-Control-Allow-Origin") != shop {
			t.Errorf("listed origin: %d ACAO %q", res.StatusCode, res.Header.Get("Access-Control-Allow-Origin"))
		}
		if res := post(shop, "OPTIONS", map[string]string{"Access-Control-Request-Method": "POST"}); res.StatusCode != 204 ||
			res.Header.Get("Access-Control-Allow-Origin") != shop {
			t.Errorf("listed preflight: %d ACAO %q", res.StatusCode, res.Header.Get("Access-Control-Allow-Origin"))
		}
		for _, m := range []string{"POST", "OPTIONS"} {
			res := post("https://evil.example", m, map[string]string{"Access-Control-Request-Method": "POST"})
			if res.StatusCode != 403 || res.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("other origin %s: %d ACAO %q, want 403 without ACAO", m, res.StatusCode, res.Header.Get("Access-Control-Allow-Origin"))
			}
		}
	})

	t.Run("invalid UTF-8 and control characters in JSON get 400 / 102", func(t *testing.T) {
		auth := `"userId":"` + chat.UserID + `","secureKey":"` + chat.SecureKey + `"`
		for _, body := range []string{"{" + auth + ",\"message\":\"card \xff\xfe\"}", "{" + auth + `,"message":"\u0007"}`, "{" + auth + `,"message":"\ud800"}`} {
			r, err := gms.Post(ctx, "/genesys/2/chat/"+c.Service()+"/"+chat.ChatID+"/send", "application/json", []byte(body))
			if err != nil {
				t.Fatal(err)
			}
			if r.HTTPStatus != 400 || r.StatusCode != 2 || len(r.Errors) != 1 || r.Errors[0].Code != 102 {
				t.Errorf("body %q: %d %s, want 400 code 102", body, r.HTTPStatus, r.Raw)
			}
		}
		msgs, _, err := chat.Transcript(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.Type == "Message" && m.From.Type == "Client" {
				t.Errorf("a refused message reached the chat: %+v", m)
			}
		}
	})

	t.Run("security headers", func(t *testing.T) {
		for _, path := range []string{"/", "/static/app.js", "/healthz", "/genesys/2/chat/" + c.Service() + "/nope/refresh"} {
			res, err := gms.HTTP.Get(c.WebAPIURL() + path)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			h := res.Header
			if !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") || h.Get("X-Frame-Options") != "DENY" ||
				h.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("%s: %d headers %v", path, res.StatusCode, h)
			}
		}
	})

	t.Run("UCS reads need the reader token", func(t *testing.T) {
		for _, path := range []string{"/ucs/v1/chats", "/ucs/v1/transcripts/" + chat.ChatID, "/ucs/v1/epochs/" + c.Service()} {
			for tok, want := range map[string]int{"": 401, "wrong": 401, c.UCSReaderToken(): 0} {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.UCSURL()+path, nil)
				if tok != "" {
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if want != 0 && res.StatusCode != want || want == 0 && res.StatusCode == 401 {
					t.Errorf("GET %s with token %q: %d", path, tok, res.StatusCode)
				}
			}
		}
	})
}

// TestQueueCapNoAgent: with interaction --max-queue=1 and no agent logged
// in, the second chat is told that no agent is available and ends; the first
// stays queued.
func TestQueueCapNoAgent(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Tune: func(p demo.Plan) demo.Plan {
		return p.WithKind(demo.KindInteraction, "--max-queue=1")
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	gms := c.Customer()
	first := gms.MustStart(t, "Ann")
	// Let interaction queue the first chat before the second arrives.
	time.Sleep(500 * time.Millisecond)
	second := gms.MustStart(t, "Ben")
	var msgs []harness.Message
	begin := time.Now()
	deadline := begin.Add(15 * time.Second)
	for {
		var ended bool
		var err error
		msgs, ended, err = second.Transcript(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ended || time.Now().After(deadline) {
			t.Logf("second chat: ended %v after %v", ended, time.Since(begin).Round(time.Millisecond))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var notice *harness.Message
	for i, m := range msgs {
		if m.Type == "Notice" && m.NoticeType == "noAgentAvailable" {
			notice = &msgs[i]
		}
	}
	if notice == nil || !strings.Contains(notice.Text, "No agent is available") || msgs[len(msgs)-1].Type != "ChatEnded" {
		t.Fatalf("the second chat's transcript %+v: want a noAgentAvailable notice and ChatEnded", msgs)
	}
	if _, ended, err := first.Transcript(ctx); err != nil || ended {
		t.Fatalf("the first chat (queued) ended: %v %v", ended, err)
	}
}
