package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/telemetry"
)

// TestCoreConfigGenesysDurations: the --config file and the flags of
// `hachat core` take Genesys bare-second durations and Go durations; unknown
// keys stay errors.
func TestCoreConfigGenesysDurations(t *testing.T) {
	for _, tc := range []struct {
		name  string
		yaml  string
		args  []string
		check func(coreFile) bool
		err   bool
	}{
		{"yaml seconds", "transcript-resend-delay: 5\nflex-disconnect-timeout: 90\nname: a\n", nil, func(f coreFile) bool {
			return f.TranscriptResendDelay == 5*time.Second && f.FlexDisconnectTimeout == 90*time.Second && f.Name == "a"
		}, false},
		{"yaml go duration", "transcript-resend-delay: 250ms\n", nil, func(f coreFile) bool { return f.TranscriptResendDelay == 250*time.Millisecond }, false},
		{"flag seconds over yaml", "transcript-resend-delay: 5\n", []string{"--transcript-resend-delay", "2"}, func(f coreFile) bool {
			return f.TranscriptResendDelay == 2*time.Second
		}, false},
		{"telemetry kept", "telemetry:\n  log-format: json\n", nil, func(f coreFile) bool { return f.Telemetry.LogFormat == "json" }, false},
		{"ucs token", "ucs-token: w1\n", nil, func(f coreFile) bool { return f.UCSToken == "w1" }, false},
		{"ucs token flag", "", []string{"--ucs-token", "w2"}, func(f coreFile) bool { return f.UCSToken == "w2" }, false},
		{"unknown key", "transcript-resend-dlay: 5\n", nil, nil, true},
		{"bad duration", "flex-disconnect-timeout: soon\n", nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "core.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			file := coreFile{Config: chatcore.DefaultConfig(), Membership: membership.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
			args := append([]string{"--config", path}, tc.args...)
			err := parseFlags("core", "", args, io.Discard, &file, file.registerFlags)
			if (err != nil) != tc.err {
				t.Fatalf("err %v", err)
			}
			if err == nil && !tc.check(file) {
				t.Fatalf("file %+v", file)
			}
		})
	}
}
