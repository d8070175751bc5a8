package saver

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hachat/hachat/chatcore/transcript"
)

// TestUCSTroubleRateLimitsWhileFlapping: UCS answering every other save
// (flaky) must not turn every failure into a "first" WARN.
func TestUCSTroubleRateLimitsWhileFlapping(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var u ucsTrouble
	for range 100 {
		u.failed(t.Context(), log, "s1", transcript.ErrUnavailable)
		u.ok(t.Context(), log)
	}
	if n := strings.Count(buf.String(), "transcript saves failing"); n != 1 {
		t.Errorf("%d WARNs for 100 flaps within %s, want 1", n, ucsWarnEvery)
	}
	if n := strings.Count(buf.String(), "transcript saves reach UCS again"); n != 1 {
		t.Errorf("%d INFOs for 100 flaps within %s, want 1", n, ucsWarnEvery)
	}
}
