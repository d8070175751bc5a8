// Package edge holds the HTTP defences that hachat's browser-facing servers
// (webapi's customer API and web sample, interaction's agent desktop) put in
// front of their handlers: security headers on every answer, an allow-list
// of the origins that may call an API from another site (CORS), the client's
// address behind trusted proxies, and token-bucket limits per client address
// and overall.
//
// Each defence is a value built from configuration (the owning part's one
// config struct holds the settings) with no package-level state, so two
// servers in one process never share a limit or an allow-list.
package edge

import "net/http"

// DefaultCSP is the Content-Security-Policy SecurityHeaders sends when given
// none: the page runs only its own scripts and styles, talks only to its
// own server (fetch, EventSource), loads images from itself or data: URLs,
// cannot be framed by any site, and has no <base> or foreign form targets.
const DefaultCSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// SecurityHeaders returns a handler that sets, on every answer of next
// (pages, API answers, errors, 404s and the push channel alike):
//
//   - Content-Security-Policy: csp, or DefaultCSP when csp is empty (its
//     frame-ancestors 'none' forbids framing in current browsers);
//   - X-Frame-Options: DENY, the same rule for older browsers;
//   - X-Content-Type-Options: nosniff, so a browser never runs an answer as
//     a type other than the one declared;
//   - Referrer-Policy: no-referrer, so chat URLs (which carry chat ids) do
//     not leak to other sites.
//
// The headers are set before next runs, so next may replace any of them
// for one answer.
func SecurityHeaders(next http.Handler, csp string) http.Handler {
	if csp == "" {
		csp = DefaultCSP
	}
	// The values are made once and shared by every answer (what Set does,
	// without a slice per header per answer): each is one element long, so
	// a handler that Adds to one gets a copy, and net/http copies them
	// before writing.
	var (
		cspV      = []string{csp}
		frameV    = []string{"DENY"}
		nosniffV  = []string{"nosniff"}
		referrerV = []string{"no-referrer"}
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Security-Policy"] = cspV
		h["X-Frame-Options"] = frameV
		h["X-Content-Type-Options"] = nosniffV
		h["Referrer-Policy"] = referrerV
		next.ServeHTTP(w, r)
	})
}
