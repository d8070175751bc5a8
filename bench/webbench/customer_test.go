package webbench

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// TestPost checks the answers a customer's post tells apart: a success
// (decoded only when asked), statusCode 1 (resent: errRetry), and any
// other status (an error for good); and that a send's form carries the
// chat's parameters and the message id.
func TestPost(t *testing.T) {
	var gotForm url.Values
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		gotForm, _ = url.ParseQuery(string(body))
		switch r.URL.Path {
		case "/ok":
			_, _ = io.WriteString(w, `{"statusCode":0,"chatId":"c1","userId":"u1","secureKey":"k1","chatEnded":false}`)
		case "/retry":
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"statusCode":1,"chatEnded":false,"errors":[{"code":108,"advice":"again"}]}`)
		case "/refused":
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"statusCode":2,"chatEnded":false,"errors":[{"code":105,"advice":"no"}]}`)
		}
	}))
	defer hs.Close()
	web, err := newFormClient(hs.URL, 5*time.Second, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer web.close()
	b := &bench{webapi: hs.URL, web: web, text: "hi there&"}
	c := &customer{userID: "u 1", secureKey: "k+1"}
	c.sendForm = url.Values{"userId": {c.userID}, "secureKey": {c.secureKey}}.Encode() + "&message=" + url.QueryEscape(b.text) + "&clientMessageId="

	if err := b.post(t.Context(), "/ok", appendMessageID([]byte(c.sendForm), 42), nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	want := url.Values{"userId": {"u 1"}, "secureKey": {"k+1"}, "message": {"hi there&"}, "clientMessageId": {"w42"}}
	if gotForm.Encode() != want.Encode() {
		t.Errorf("form %v, want %v", gotForm, want)
	}
	var ans gmsAnswer
	if err := b.post(t.Context(), "/ok", nil, &ans); err != nil || ans.ChatID != "c1" || ans.SecureKey != "k1" {
		t.Errorf("start: %+v, %v", ans, err)
	}
	if err := b.post(t.Context(), "/retry", nil, nil); !errors.Is(err, errRetry) {
		t.Errorf("statusCode 1: %v, want errRetry", err)
	}
	if err := b.post(t.Context(), "/refused", nil, nil); err == nil || errors.Is(err, errRetry) {
		t.Errorf("statusCode 2: %v, want an error for good", err)
	}
}
