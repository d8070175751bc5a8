package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// ucsMetric sums a metric of ucs's /metrics (0 when no sample exists yet).
func ucsMetric(c *harness.Cluster, name string, labels ...string) (float64, error) {
	resp, err := c.HTTP().Get(c.UCSURL() + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	v, _ := harness.SumMetric(string(b), name, labels...)
	return v, nil
}

// TestGDPRExportDeleteThroughCtl: a customer chats through webapi with an
// email address; `hachat ctl export --email` shows the saved transcript,
// `hachat ctl delete --email` removes it, and the chat core's later saves
// of the still-live chat (a new message, the end) are refused by the
// tombstone: the transcript never comes back. Another customer's chat is
// untouched. It runs on a plaintext cluster, on one with mTLS everywhere
// (ctl then uses the state file's operator certificate), and on one whose
// two ucs instances share PostgreSQL (ctl talks to ucs, the cores may save
// through either).
func TestGDPRExportDeleteThroughCtl(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts harness.Options
	}{
		{"plaintext", harness.Options{}},
		{"mtls", harness.Options{TLS: true}},
		{"postgres", harness.Options{UCSStore: "postgres"}},
	} {
		t.Run(tc.name, func(t *testing.T) { gdprThroughCtl(t, harness.StartCluster(t, tc.opts)) })
	}
}

func gdprThroughCtl(t *testing.T, c *harness.Cluster) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	const email = "ann.gdpr@example.com"
	start := func(nick, mail, id string) *harness.Chat {
		t.Helper()
		chat, resp, err := c.Customer().Start(ctx, url.Values{"nickname": {nick}, "emailAddress": {mail}, "userData[CustomerId]": {id}})
		if err != nil || chat == nil {
			t.Fatalf("start %s: %v %+v", nick, err, resp)
		}
		return chat
	}
	ann, bob := start("Ann", email, "C-1"), start("Bob", "bob@example.com", "C-2")
	mustSend(t, ann, "my card number is 4111")
	mustSend(t, bob, "hello")
	for _, ch := range []*harness.Chat{ann, bob} {
		harness.Eventually(t, "the message saved to UCS", 15*time.Second, func() error {
			saved, _, err := savedMessages(ctx, c.UCS(), ch.ChatID)
			if err != nil || len(saved) == 0 {
				return fmt.Errorf("saved %v, %v", saved, err)
			}
			return nil
		})
	}

	out, err := c.Ctl("export", "--email", strings.ToUpper(email))
	if err != nil || !strings.Contains(out, ann.ChatID) || !strings.Contains(out, "my card number is 4111") || strings.Contains(out, bob.ChatID) {
		t.Fatalf("ctl export: %v\n%s", err, out)
	}
	// Without the admin token (and with a wrong one) nothing is deleted.
	if out, err := c.Ctl("delete", "--email", email, "--admin-token", "wrong"); err == nil || !strings.Contains(out, "access denied") {
		t.Fatalf("ctl delete with a wrong token: %v\n%s", err, out)
	}
	if saved, _, err := savedMessages(ctx, c.UCS(), ann.ChatID); err != nil || len(saved) == 0 {
		t.Fatalf("after a refused delete: %v %v", saved, err)
	}
	out, err = c.Ctl("delete", "--email", email)
	if err != nil || !strings.Contains(out, "deleted chat "+ann.ChatID) {
		t.Fatalf("ctl delete: %v\n%s", err, out)
	}

	// The chat goes on; the core's saves of it are refused from now on.
	before, err := ucsMetric(c, "ucs_saves_total", `result="deleted"`)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, ann, "are you still there?")
	if r, err := ann.Disconnect(ctx); err != nil || !r.OK() {
		t.Fatalf("disconnect: %v %+v", err, r)
	}
	harness.Eventually(t, "the core's later saves refused by the tombstone", 15*time.Second, func() error {
		n, err := ucsMetric(c, "ucs_saves_total", `result="deleted"`)
		if err != nil || n < before+1 {
			return fmt.Errorf("deleted saves %v (before %v), %v", n, before, err)
		}
		return nil
	})
	if _, err := c.UCS().Transcript(ctx, ann.ChatID); !errors.Is(err, ucsmock.ErrNotFound) {
		t.Errorf("the deleted transcript came back: %v", err)
	}
	if out, err := c.Ctl("export", "--chat", ann.ChatID); err == nil || !strings.Contains(out, "chat deleted") {
		t.Errorf("ctl export of the deleted chat: %v\n%s", err, out)
	}
	if saved, _, err := savedMessages(ctx, c.UCS(), bob.ChatID); err != nil || len(saved) != 1 {
		t.Errorf("another customer's transcript: %v %v", saved, err)
	}
	if n, err := ucsMetric(c, "ucs_gdpr_chats_total", `op="delete"`); err != nil || n != 1 {
		t.Errorf("ucs_gdpr_chats_total{op=delete} = %v, %v; want 1", n, err)
	}
	if !c.LogContains("ucs", "gdpr delete") {
		t.Errorf("ucs logged no gdpr delete")
	}
}
