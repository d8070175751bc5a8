package membership

import (
	"bytes"
	"log"
	"regexp"
	"strings"
)

// suspectLine is how memberlist (v0.7) logs that this node's own probes of a
// member failed and it now suspects it. memberlist has no callback for this,
// so the log line is the signal for StateSuspect.
var suspectLine = regexp.MustCompile(`memberlist: Suspect (.+) has failed, no acks received`)

// logWriter routes memberlist's log lines into slog at debug level (its
// warnings and errors are routine during failures; the membership's own
// logs tell the story) and watches them for suspicions.
type logWriter struct{ m *Membership }

func newMemberlistLogger(m *Membership) *log.Logger {
	return log.New(&logWriter{m: m}, "", 0)
}

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\n"))
	level, msg := "", line
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			level, msg = line[1:i], strings.TrimSpace(line[i+1:])
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.m.log.Debug(msg, "source", "memberlist", "level_memberlist", level)
	if sm := suspectLine.FindStringSubmatch(line); sm != nil {
		w.m.setSuspect(sm[1], true)
	}
	return len(p), nil
}
