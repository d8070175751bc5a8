package chatcore

import (
	"strings"
	"testing"
	"time"
)

// TestTranscriptSaveLingerValidation: transcript-save-linger takes 0 (off)
// up to 1s; a negative or longer linger is refused by name.
func TestTranscriptSaveLingerValidation(t *testing.T) {
	tests := []struct {
		linger time.Duration
		ok     bool
	}{
		{0, true},
		{10 * time.Millisecond, true},
		{time.Second, true},
		{-time.Millisecond, false},
		{time.Second + time.Millisecond, false},
	}
	for _, tc := range tests {
		t.Run(tc.linger.String(), func(t *testing.T) {
			cfg := testConfig()
			cfg.TranscriptSaveLinger = tc.linger
			err := cfg.Validate()
			switch {
			case tc.ok && err != nil:
				t.Fatalf("Validate: %v", err)
			case !tc.ok && (err == nil || !strings.Contains(err.Error(), "transcript-save-linger")):
				t.Fatalf("Validate = %v, want an error naming transcript-save-linger", err)
			}
		})
	}
}
