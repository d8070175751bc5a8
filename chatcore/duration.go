package chatcore

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Genesys writes its duration options (transcript-resend-delay,
// flex-disconnect-timeout, ...) as a bare number of seconds. Every duration
// option of Config accepts that form as well as a Go duration ("1.5s",
// "500ms"), on the command line and in YAML.

// ErrBadDuration is the error of a duration option that is neither a Go
// duration nor a bare integer of seconds.
var ErrBadDuration = errors.New("bad duration")

// ParseDuration parses a duration option: a bare integer is seconds (the
// Genesys form, e.g. "5" is 5s), anything else is a Go duration ("1.5s",
// "500ms"). Surrounding spaces are ignored.
func ParseDuration(v string) (time.Duration, error) {
	s := strings.TrimSpace(v)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
			return 0, fmt.Errorf("%w %q: too many seconds", ErrBadDuration, v)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w %q: want a Go duration such as 1.5s or a whole number of seconds", ErrBadDuration, v)
	}
	return d, nil
}

// durationFlag is a flag.Value over a duration option (ParseDuration).
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return "0s"
	}
	return f.d.String()
}

func (f durationFlag) Set(v string) error {
	d, err := ParseDuration(v)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

// durationVar registers a duration option on fs (Go duration or bare seconds).
func durationVar(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var(durationFlag{d: p}, name, usage+" (Go duration, or whole seconds as in Genesys)")
}

// durationKeys are the YAML keys of Config whose values are durations.
var durationKeys = map[string]bool{
	"flex-disconnect-timeout":    true,
	"ended-session-linger":       true,
	"transcript-resend-delay":    true,
	"transcript-save-timeout":    true,
	"transcript-save-linger":     true,
	"transcript-breaker-timeout": true,
	"replication-timeout":        true,
	"probe-timeout":              true,
	"epoch-lease":                true,
}

// NormalizeYAMLDurations rewrites, in a YAML mapping (or a document holding
// one), the bare integer values (quoted or not) of Config's duration keys into Go durations
// in seconds ("5" becomes "5s"), so that a file written with Genesys values
// decodes into Config. Other keys and values are left alone; a value that
// is neither form is left for the decoder to reject.
func NormalizeYAMLDurations(n *yaml.Node) error {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			if err := NormalizeYAMLDurations(c); err != nil {
				return err
			}
		}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || !durationKeys[k.Value] || v.Kind != yaml.ScalarNode {
			continue
		}
		if _, err := strconv.ParseInt(strings.TrimSpace(v.Value), 10, 64); err != nil && v.ShortTag() != "!!int" {
			continue // a Go duration (or garbage) for the decoder
		}
		d, err := ParseDuration(v.Value)
		if err != nil {
			return fmt.Errorf("line %d: %s: %w", v.Line, k.Value, err)
		}
		v.Value, v.Tag, v.Style = d.String(), "!!str", 0
	}
	return nil
}
