package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
)

// TestCustomerTranscriptInUCS: several customers send numbered messages
// concurrently; each sees every acknowledged message exactly once, in
// order, and so does the transcript in ucsmock (transcript-auto-save=1).
func TestCustomerTranscriptInUCS(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	gms := c.Customer()
	var sessions []*harness.Session
	for i := range 4 {
		chat := gms.MustStart(t, fmt.Sprintf("customer-%d", i))
		sessions = append(sessions, &harness.Session{ChatID: chat.ChatID, Sides: []harness.Side{harness.CustomerSide(chat)}})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	rec := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: 15}).Wait()
	if rec.Acked() != 4*15 {
		t.Errorf("acknowledged %d of %d messages on a healthy cluster", rec.Acked(), 4*15)
	}
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: c.UCS()})

	// The XML rendering holds the same messages.
	xml, err := c.UCS().TranscriptXML(ctx, sessions[0].ChatID)
	if err != nil {
		t.Fatal(err)
	}
	for seq := 1; seq <= 15; seq++ {
		if text := harness.MessageText(sessions[0].ChatID, "customer", seq); !strings.Contains(string(xml), text) {
			t.Errorf("XML transcript lacks %q", text)
		}
	}
}

// TestIdempotentResend: a resend with the same clientMessageId returns the
// first index, says duplicate, and the message exists once everywhere.
func TestIdempotentResend(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	chat := c.Customer().MustStart(t, "Ann")
	ctx := t.Context()
	first, err := chat.Send(ctx, "only once", "cmid-1")
	if err != nil || !first.OK() || first.Index == 0 {
		t.Fatalf("send: %v %+v", err, first)
	}
	for i := range 3 {
		again, err := chat.Send(ctx, "only once", "cmid-1")
		if err != nil || !again.OK() {
			t.Fatalf("resend %d: %v %+v", i, err, again)
		}
		if again.Index != first.Index || !again.Duplicate {
			t.Fatalf("resend %d: index %d duplicate %v, want index %d duplicate true", i, again.Index, again.Duplicate, first.Index)
		}
	}
	other, err := chat.Send(ctx, "only once", "cmid-2")
	if err != nil || !other.OK() || other.Index <= first.Index || other.Duplicate {
		t.Fatalf("a new id is a new message: %v %+v", err, other)
	}
	msgs, _, err := chat.Transcript(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := countText(msgs, "only once"); n != 2 {
		t.Fatalf("customer sees %d copies, want 2 (two ids): %+v", n, msgs)
	}
	harness.Eventually(t, "both messages saved once in UCS", 15*time.Second, func() error {
		tr, err := c.UCS().Transcript(ctx, chat.ChatID)
		if err != nil {
			return err
		}
		n := 0
		for _, ev := range harness.TranscriptView(tr) {
			if ev.Type == "Message" && ev.Text == "only once" {
				n++
			}
		}
		if n != 2 {
			return fmt.Errorf("%d copies in UCS", n)
		}
		return nil
	})
}

func countText(msgs []harness.Message, text string) int {
	n := 0
	for _, m := range msgs {
		if m.Type == "Message" && m.Text == text {
			n++
		}
	}
	return n
}

// TestBadInputMatrix: malformed bodies, an oversized message, an unknown
// chat, a wrong secureKey and too many sends each get a clear error, and
// none of them changes the transcript.
func TestBadInputMatrix(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--send-rate=2", "--send-burst=4"}})
	gms := c.Customer()
	chat := gms.MustStart(t, "Ann")
	ctx := t.Context()
	if r, err := chat.Send(ctx, "hello", "good-1"); err != nil || !r.OK() {
		t.Fatalf("a good send: %v %+v", err, r)
	}
	before := snapshot(t, chat)
	base := "/genesys/2/chat/" + url.PathEscape(c.Service())
	chatPath := base + "/" + url.PathEscape(chat.ChatID)
	creds := url.Values{"userId": {chat.UserID}, "secureKey": {chat.SecureKey}}
	form := func(extra url.Values) []byte {
		v := url.Values{}
		for k, x := range creds {
			v[k] = x
		}
		for k, x := range extra {
			v[k] = x
		}
		return []byte(v.Encode())
	}
	const formType = "application/x-www-form-urlencoded"
	tests := []struct {
		name        string
		path        string
		contentType string
		body        []byte
		wantHTTP    int
		wantStatus  int
		wantCode    int
	}{
		{"start: malformed JSON", base, "application/json", []byte(`{"nickname":`), 400, 2, 101},
		{"start: JSON array", base, "application/json", []byte(`["nickname"]`), 400, 2, 101},
		{"start: no nickname", base, formType, []byte("subject=hi"), 400, 2, 102},
		{"start: unsupported content type", base, "application/xml", []byte("<nickname>Ann</nickname>"), 400, 2, 101},
		{"start: body over max-body", base, formType, []byte("nickname=" + strings.Repeat("a", 70<<10)), 400, 2, 103},
		{"send: malformed form", chatPath + "/send", formType, []byte("message=%zz&userId=x"), 400, 2, 101},
		{"send: no message", chatPath + "/send", formType, form(nil), 400, 2, 102},
		{"send: oversized message", chatPath + "/send", formType, form(url.Values{"message": {strings.Repeat("x", 4097)}}), 400, 2, 102},
		{"send: invalid UTF-8", chatPath + "/send", formType, form(url.Values{"message": {"\xff\xfe"}}), 400, 2, 102},
		{"send: unknown chat", base + "/no-such-chat/send", formType, form(url.Values{"message": {"x"}}), 404, 2, 104},
		{"send: wrong secureKey", chatPath + "/send", formType,
			[]byte(url.Values{"userId": {chat.UserID}, "secureKey": {"wrong"}, "message": {"x"}}.Encode()), 403, 2, 105},
		{"send: no secureKey", chatPath + "/send", formType, []byte(url.Values{"userId": {chat.UserID}, "message": {"x"}}.Encode()), 400, 2, 102},
		{"refresh: bad transcriptPosition", chatPath + "/refresh", formType, form(url.Values{"transcriptPosition": {"-3"}}), 400, 2, 102},
		{"unknown action", chatPath + "/explode", formType, form(nil), 404, 2, 109},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := gms.Post(ctx, tt.path, tt.contentType, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			if r.HTTPStatus != tt.wantHTTP || r.StatusCode != tt.wantStatus {
				t.Fatalf("HTTP %d statusCode %d, want %d/%d: %s", r.HTTPStatus, r.StatusCode, tt.wantHTTP, tt.wantStatus, r.Raw)
			}
			if len(r.Errors) == 0 || r.Errors[0].Advice == "" {
				t.Fatalf("no clear error: %s", r.Raw)
			}
			if r.Errors[0].Code != tt.wantCode {
				t.Errorf("error code %d, want %d: %s", r.Errors[0].Code, tt.wantCode, r.Raw)
			}
			if after := snapshot(t, chat); after != before {
				t.Fatalf("the bad request changed the chat:\nbefore %s\nafter  %s", before, after)
			}
		})
	}

	t.Run("too many sends", func(t *testing.T) {
		var limited *harness.Response
		accepted := 0
		for i := range 40 {
			r, err := chat.Send(ctx, fmt.Sprintf("burst %d", i), fmt.Sprintf("burst-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			if r.HTTPStatus == http.StatusTooManyRequests {
				limited = r
				break
			}
			if !r.OK() {
				t.Fatalf("send %d: %s", i, r.Raw)
			}
			accepted++
		}
		if limited == nil {
			t.Fatalf("40 sends in a burst at send-rate=2 send-burst=4 were all accepted")
		}
		if limited.StatusCode != 1 || len(limited.Errors) == 0 || limited.Errors[0].Code != 106 {
			t.Fatalf("429 answer: %s", limited.Raw)
		}
		msgs, _, err := chat.Transcript(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, m := range msgs {
			if m.Type == "Message" && strings.HasPrefix(m.Text, "burst ") {
				n++
			}
		}
		if n != accepted {
			t.Fatalf("transcript holds %d burst messages, %d were accepted: a refused send changed the chat", n, accepted)
		}
	})
}

// snapshot renders what the customer sees, to compare before and after.
func snapshot(t *testing.T, chat *harness.Chat) string {
	t.Helper()
	r, err := chat.Refresh(t.Context(), 1)
	if err != nil || !r.OK() {
		t.Fatalf("refresh: %v %+v", err, r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "next=%d ended=%v", r.NextPosition, r.ChatEnded)
	for _, m := range r.Messages {
		fmt.Fprintf(&b, " [%d %s %q]", m.Index, m.Type, m.Text)
	}
	return b.String()
}
