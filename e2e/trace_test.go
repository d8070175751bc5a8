package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// span is the part of a stdouttrace span record the e2e tests read.
type span struct {
	Name        string
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct{ TraceID, SpanID string }
	Status      struct{ Code string } // "Error" for a span that failed
	Attributes  []struct {
		Key   string
		Value struct {
			Type  string
			Value any
		}
	}
}

// attr returns the value of the span attribute key, or nil.
func (s span) attr(key string) any {
	for _, a := range s.Attributes {
		if a.Key == key {
			return a.Value.Value
		}
	}
	return nil
}

// spansIn reads the spans that a part exported with --trace=stdout into its log.
func spansIn(path string) ([]span, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []span
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var s span
		if json.Unmarshal(line, &s) == nil && s.SpanContext.TraceID != "" {
			out = append(out, s)
		}
	}
	return out, sc.Err()
}

// TestOneMessageOneTrace checks issue 2's observability promise: the trace of
// one customer message runs from webapi through the chat core to ucsmock,
// across three processes, with the stdout exporter.
func TestOneMessageOneTrace(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Tune: func(p demo.Plan) demo.Plan {
		return p.WithKind(demo.KindWebAPI, "--trace=stdout").
			WithKind(demo.KindCore, "--trace=stdout").
			WithKind(demo.KindUCS, "--trace=stdout")
	}})
	chat := c.Customer().MustStart(t, "Tracy")
	mustSend(t, chat, "follow me")

	sup := c.Supervisor()
	harness.Eventually(t, "the send's trace in webapi, core-a and ucs", 30*time.Second, func() error {
		web, err := spansIn(sup.LogPath("webapi"))
		if err != nil {
			return err
		}
		var traceID string
		for _, s := range web {
			if strings.Contains(s.Name, "send") {
				traceID = s.SpanContext.TraceID
			}
		}
		if traceID == "" {
			return fmt.Errorf("no send span in webapi's %d spans yet", len(web))
		}
		for _, part := range []string{"core-a", "ucs"} {
			spans, err := spansIn(sup.LogPath(part))
			if err != nil {
				return err
			}
			found := false
			for _, s := range spans {
				found = found || s.SpanContext.TraceID == traceID
			}
			if !found {
				return fmt.Errorf("trace %s not in %s's %d spans", traceID, part, len(spans))
			}
		}
		return nil
	})
}
