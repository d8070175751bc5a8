package edge

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// ErrBadOrigin reports an allow-list entry that is not an origin.
var ErrBadOrigin = errors.New("bad origin")

// Origins is the allow-list of the web origins (scheme://host[:port]) whose
// pages may call an API from another site: the company's site that embeds
// the chat. The zero value allows no other site. Requests from the server's
// own origin and requests without an Origin header (not sent by a browser
// page of another site) never need the list.
type Origins struct {
	allowed map[string]bool
}

// ParseOrigins parses a comma-separated list of origins such as
// "https://www.example.com,https://shop.example.com:8443". Entries are
// compared after lower-casing the scheme and host and dropping a default
// port; a path, query, user or wildcard is refused with ErrBadOrigin.
func ParseOrigins(list string) (Origins, error) {
	o := Origins{allowed: map[string]bool{}}
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		norm, ok := normalizeOrigin(s)
		if !ok {
			return Origins{}, fmt.Errorf("%w: %q: want scheme://host[:port]", ErrBadOrigin, s)
		}
		o.allowed[norm] = true
	}
	return o, nil
}

// Len returns how many origins the list holds.
func (o Origins) Len() int { return len(o.allowed) }

// normalizeOrigin returns the canonical form of an origin, or false when s
// is not one.
func normalizeOrigin(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || strings.Contains(u.Host, "*") {
		return "", false
	}
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		port = ""
	}
	out := u.Scheme + "://" + host
	if strings.Contains(host, ":") {
		out = u.Scheme + "://[" + host + "]"
	}
	if port != "" {
		out += ":" + port
	}
	return out, true
}

// Listed reports whether origin (an Origin header's value) is on the list.
func (o Origins) Listed(origin string) bool {
	norm, ok := normalizeOrigin(origin)
	return ok && o.allowed[norm]
}

// sameOrigin reports whether origin names the server r was sent to: its
// host and port equal the request's Host. Browsers send Origin on same-site
// POSTs too; those need no allow-list.
func sameOrigin(r *http.Request, origin string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// Allowed reports whether r may be served: it carries no Origin header, or
// its own server's origin, or a listed one.
func (o Origins) Allowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	return origin == "" || sameOrigin(r, origin) || o.Listed(origin)
}

// CORS returns a handler that applies the allow-list to next:
//
//   - a request without an Origin header, or from the server's own origin,
//     goes to next unchanged;
//   - a request from a listed origin goes to next with
//     Access-Control-Allow-Origin naming that origin (never "*") and
//     Access-Control-Expose-Headers: Retry-After; its preflight (OPTIONS with
//     Access-Control-Request-Method GET or POST) is answered 204 with the
//     allowed methods (GET, POST) and headers (Content-Type, Last-Event-ID,
//     apikey: the header GMS widgets send);
//   - a request or preflight from any other origin never reaches next: it
//     gets no CORS header, and refuse answers it (with 403).
//
// Every answer carries Vary: Origin, so that a cache does not hand one
// origin's answer to another. No credentials (cookies) are allowed: the
// chat's secureKey travels in the request itself.
func (o Origins) CORS(next http.Handler, refuse http.HandlerFunc) http.Handler {
	varyOrigin := []string{"Origin"} // shared, as SecurityHeaders' values
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := w.Header(); len(h["Vary"]) == 0 {
			h["Vary"] = varyOrigin
		} else {
			h.Add("Vary", "Origin")
		}
		origin := r.Header.Get("Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		switch {
		case origin == "" || (sameOrigin(r, origin) && !preflight):
			next.ServeHTTP(w, r)
			return
		case !o.Listed(origin) && !sameOrigin(r, origin):
			refuse(w, r)
			return
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		if !preflight {
			h.Set("Access-Control-Expose-Headers", "Retry-After")
			next.ServeHTTP(w, r)
			return
		}
		if m := r.Header.Get("Access-Control-Request-Method"); m != http.MethodGet && m != http.MethodPost {
			h.Del("Access-Control-Allow-Origin")
			refuse(w, r)
			return
		}
		h.Set("Access-Control-Allow-Methods", "GET, POST")
		h.Set("Access-Control-Allow-Headers", "Content-Type, Last-Event-ID, apikey")
		h.Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
	})
}
