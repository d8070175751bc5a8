package e2e

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
)

// TestGMSClientsThroughTheCluster replays, against the whole cluster (the
// real webapi process behind its sidecar, the cores, interaction), what
// two third-party GMS Chat API v2 clients send: a Python bot that posts to
// paths with a trailing slash, and a React Native app that posts every
// field form-encoded with userData, refreshes from nextPosition - 1 and
// reads nextPosition from every answer. The agent sees the userData; the
// app's NaN position reads as "from the start". webapi's own unit tests
// (webapi/gmscompat_test.go) cover the sequences in detail.
func TestGMSClientsThroughTheCluster(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	gms := c.Customer()
	base := "/genesys/2/chat/" + url.PathEscape(c.Service())

	// The Python bot: trailing slash on the start.
	bot, err := gms.PostForm(ctx, base+"/", url.Values{"firstName": {"Py"}, "lastName": {"Bot"}, "subject": {"test"}})
	if err != nil || !bot.OK() || bot.ChatID == "" || bot.NextPosition == 0 {
		t.Fatalf("bot start with a trailing slash: %v %s", err, bot.Raw)
	}
	botChat := &harness.Chat{GMS: gms, ChatID: bot.ChatID, UserID: bot.UserID, SecureKey: bot.SecureKey, Alias: bot.Alias}
	d, err := botChat.Call(ctx, "disconnect/", url.Values{"alias": {bot.Alias}})
	if err != nil || !d.OK() || !d.ChatEnded || d.ChatID != bot.ChatID || d.UserID != bot.UserID {
		t.Fatalf("bot disconnect with a trailing slash: %v %s", err, d.Raw)
	}

	// The React Native app.
	app, err := gms.PostForm(ctx, base, url.Values{"alias": {""}, "secureKey": {""}, "userId": {""}, "nickname": {"Sara Ali"},
		"firstName": {"Sara"}, "lastName": {"Ali"}, "emailAddress": {"sara@example.com"}, "subject": {"billing"}, "text": {""},
		"userData[GCTI_LanguageCode]": {"ar"}, "userData[_genesys_source]": {"mobile"}})
	if err != nil || !app.OK() {
		t.Fatalf("app start: %v %s", err, app.Raw)
	}
	chat := &harness.Chat{GMS: gms, ChatID: app.ChatID, UserID: app.UserID, SecureKey: app.SecureKey, Alias: app.Alias}
	next := app.NextPosition

	agent := c.Agents().MustLogin(t, "ada", "agent")
	if err := agent.Take(ctx, chat.ChatID); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the agent seeing the app's userData", 10*time.Second, func() error {
		st, err := agent.State(ctx)
		if err != nil {
			return err
		}
		for _, ch := range st.Chats {
			if ch.ChatID == chat.ChatID && ch.UserData["GCTI_LanguageCode"] == "ar" && ch.UserData["_genesys_source"] == "mobile" {
				return nil
			}
		}
		return fmt.Errorf("agent state chats %+v", st.Chats)
	})
	if _, _, err := agent.Send(ctx, chat.ChatID, "مرحبا", "ag-1"); err != nil {
		t.Fatal(err)
	}

	auth := func(kv ...string) url.Values {
		v := url.Values{"alias": {chat.Alias}, "secureKey": {chat.SecureKey}, "userId": {chat.UserID}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	seen := map[uint64]bool{}
	harness.Eventually(t, "the app polling the agent's greeting", 10*time.Second, func() error {
		r, err := chat.Call(ctx, "refresh", auth("transcriptPosition", fmt.Sprint(max(0, int64(next)-1)), "message", ""))
		if err != nil || !r.OK() || r.NextPosition == 0 || r.ChatID != chat.ChatID || r.SecureKey != chat.SecureKey {
			return fmt.Errorf("refresh: %v %s", err, r.Raw)
		}
		next = r.NextPosition
		for _, m := range r.Messages {
			seen[m.Index] = true
			if m.Type == "Message" && m.Text == "مرحبا" && m.From.Type == "Agent" {
				return nil
			}
		}
		return fmt.Errorf("no greeting in %s", r.Raw)
	})
	s, err := chat.Call(ctx, "send", auth("message", "my bill is wrong", "messageType", "text"))
	if err != nil || !s.OK() || s.NextPosition != s.Index || s.ChatID != chat.ChatID {
		t.Fatalf("send: %v %s", err, s.Raw)
	}
	r, err := chat.Call(ctx, "refresh", auth("transcriptPosition", "NaN", "message", ""))
	if err != nil || !r.OK() || len(r.Messages) == 0 || r.Messages[0].From.Nickname != "Sara Ali" {
		t.Fatalf("refresh from NaN: %v %s", err, r.Raw)
	}
	if _, err := agent.WaitText(ctx, chat.ChatID, "my bill is wrong"); err != nil {
		t.Fatal(err)
	}
	if d, err := chat.Call(ctx, "disconnect", auth()); err != nil || !d.OK() || !d.ChatEnded || d.NextPosition == 0 {
		t.Fatalf("disconnect: %v %+v", err, d)
	}
}
