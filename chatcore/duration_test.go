package chatcore

import (
	"errors"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"5", 5 * time.Second, false},
		{" 60 ", time.Minute, false},
		{"0", 0, false},
		{"-2", -2 * time.Second, false}, // parsed; Validate refuses it
		{"1s", time.Second, false},
		{"1.5s", 1500 * time.Millisecond, false},
		{"500ms", 500 * time.Millisecond, false},
		{"2m30s", 150 * time.Second, false},
		{"", 0, true},
		{"5x", 0, true},
		{"1.5", 0, true}, // only whole seconds are bare
		{"99999999999999999", 0, true},
		{"0x10", 0, true},
	} {
		got, err := ParseDuration(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, err %v", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !errors.Is(err, ErrBadDuration) {
			t.Errorf("ParseDuration(%q) error %v is not ErrBadDuration", tc.in, err)
		}
	}
}

func TestDurationFlagsAcceptGenesysSeconds(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		check func(Config) bool
		err   bool
	}{
		{[]string{"-transcript-resend-delay", "5"}, func(c Config) bool { return c.TranscriptResendDelay == 5*time.Second }, false},
		{[]string{"-flex-disconnect-timeout=30"}, func(c Config) bool { return c.FlexDisconnectTimeout == 30*time.Second }, false},
		{[]string{"-transcript-resend-delay", "250ms"}, func(c Config) bool { return c.TranscriptResendDelay == 250*time.Millisecond }, false},
		{[]string{"-replication-timeout", "1"}, func(c Config) bool { return c.ReplicationTimeout == time.Second }, false},
		{[]string{}, func(c Config) bool { return c == DefaultConfig() }, false},
		{[]string{"-flex-disconnect-timeout", "soon"}, nil, true},
	} {
		cfg := DefaultConfig()
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.RegisterFlags(fs)
		err := fs.Parse(tc.args)
		if (err != nil) != tc.err {
			t.Errorf("%v: err %v", tc.args, err)
			continue
		}
		if err == nil && !tc.check(cfg) {
			t.Errorf("%v: config %+v", tc.args, cfg)
		}
	}
}

func TestYAMLDurationsAcceptGenesysSeconds(t *testing.T) {
	for _, tc := range []struct {
		doc   string
		check func(Config) bool
		err   bool
	}{
		{"transcript-resend-delay: 5\nflex-disconnect-timeout: 120\n", func(c Config) bool {
			return c.TranscriptResendDelay == 5*time.Second && c.FlexDisconnectTimeout == 2*time.Minute
		}, false},
		{"transcript-resend-delay: 1.5s\n", func(c Config) bool { return c.TranscriptResendDelay == 1500*time.Millisecond }, false},
		{"transcript-resend-delay: \"7\"\n", func(c Config) bool { return c.TranscriptResendDelay == 7*time.Second }, false},
		{"max-sessions: 5\n", func(c Config) bool { return c.MaxSessions == 5 }, false}, // other ints untouched
		{"flex-disconnect-timeout: soon\n", nil, true},
	} {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(tc.doc), &n); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		err := NormalizeYAMLDurations(&n)
		if err == nil {
			err = n.Decode(&cfg)
		}
		if (err != nil) != tc.err {
			t.Errorf("%q: err %v", tc.doc, err)
			continue
		}
		if err == nil && !tc.check(cfg) {
			t.Errorf("%q: config %+v", tc.doc, cfg)
		}
	}
}

// TestDurationKeysCoverConfig keeps durationKeys equal to Config's duration fields.
func TestDurationKeysCoverConfig(t *testing.T) {
	typ := reflect.TypeFor[Config]()
	got := map[string]bool{}
	for f := range typ.Fields() {
		if f.Type == reflect.TypeFor[time.Duration]() {
			got[strings.Split(f.Tag.Get("yaml"), ",")[0]] = true
		}
	}
	if !reflect.DeepEqual(got, durationKeys) {
		t.Fatalf("duration fields %v, durationKeys %v", got, durationKeys)
	}
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"5", "1s", "-3", "1.5", "", "9223372036", "1h2m3.5s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		if _, nerr := time.ParseDuration(strings.TrimSpace(s)); nerr != nil && d%time.Second != 0 {
			t.Fatalf("%q parsed as bare seconds to %v", s, d)
		}
	})
}
