package interaction

import (
	"os"
	"regexp"
	"testing"
)

// tokenRE finds the custom properties (design tokens) of a stylesheet.
var tokenRE = regexp.MustCompile(`--([a-z-]+):\s*([^;]+);`)

// tokens returns the custom properties a stylesheet defines.
func tokens(t *testing.T, css string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, m := range tokenRE.FindAllStringSubmatch(css, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// TestDesktopTokensMatchCustomerPage keeps the agent desktop's design
// tokens (colours) equal to the customer page's, so that the two pages
// speak one design language (the browser test compares computed styles).
func TestDesktopTokensMatchCustomerPage(t *testing.T) {
	customer, err := os.ReadFile("../webapi/static/style.css")
	if err != nil {
		t.Fatal(err)
	}
	desktop, err := static.ReadFile("static/style.css")
	if err != nil {
		t.Fatal(err)
	}
	want, got := tokens(t, string(customer)), tokens(t, string(desktop))
	if len(want) < 10 {
		t.Fatalf("the customer page defines %d tokens: parsed wrong?", len(want))
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("--%s: desktop %q, customer page %q", name, got[name], v)
		}
	}
}
