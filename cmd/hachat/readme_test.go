package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMESpeaksToUsers: the README is the demo's user guide. It tells a
// new user the demo accounts and tokens and how to bring a killed part
// back, and carries none of the project's internal wording (who built
// what, on which machine, in which branch or issue).
func TestREADMESpeaksToUsers(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, tc := range []struct{ what, re string }{
		{"the seed's test", `(?i)\bthe seed\b`},
		{"an issue number or 'by issue'", `(?i)\bby issue\b|\bissue #?[0-9]+`},
		{"this machine's cores", `(?i)this (2|two)-core machine`},
		{"a branch", `(?i)\bthis branch\b`},
		{"the project's helpers", `(?i)\bhelpers?\b|\bcoordinator\b`},
	} {
		if loc := regexp.MustCompile(tc.re).FindStringIndex(readme); loc != nil {
			line := strings.Count(readme[:loc[0]], "\n") + 1
			t.Errorf("README.md:%d: internal wording (%s): %q", line, tc.what, readme[loc[0]:loc[1]])
		}
	}
	for _, tc := range []struct{ what, text string }{
		{"the agent logins", "`ada`"},
		{"the supervisor login", "supervisor `sam`"},
		{"where the admin token is", "credentials.adminToken"},
		{"where the UCS reader token is", "credentials.ucsReaderToken"},
		{"how to restart a part", "hachat demo restart"},
		{"how to see the cluster", "hachat ctl status"},
	} {
		if !strings.Contains(readme, tc.text) {
			t.Errorf("README.md does not tell %s (%q)", tc.what, tc.text)
		}
	}
}
