package edge

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseOrigins(t *testing.T) {
	o, err := ParseOrigins(" https://WWW.Example.com , http://shop.example.com:8080,https://a.example:443/ ")
	if err != nil {
		t.Fatal(err)
	}
	if o.Len() != 3 {
		t.Fatalf("%d origins", o.Len())
	}
	for origin, want := range map[string]bool{
		"https://www.example.com":       true,
		"https://www.example.com:443":   true,
		"http://www.example.com":        false, // another scheme is another origin
		"http://shop.example.com:8080":  true,
		"http://shop.example.com":       false,
		"https://a.example":             true,
		"https://evil.example":          false,
		"https://www.example.com.evil":  false,
		"null":                          false,
		"":                              false,
		"https://www.example.com/path":  false,
		"https://user@www.example.com":  false,
		"https://www.example.com:99999": false,
	} {
		if got := o.Listed(origin); got != want {
			t.Errorf("Listed(%q) = %v, want %v", origin, got, want)
		}
	}
	for _, bad := range []string{"www.example.com", "https://*.example.com", "ftp://x.example", "https://x.example/path", "https://x.example?q"} {
		if _, err := ParseOrigins(bad); !errors.Is(err, ErrBadOrigin) {
			t.Errorf("ParseOrigins(%q) = %v, want ErrBadOrigin", bad, err)
		}
	}
}

func TestCORS(t *testing.T) {
	o, err := ParseOrigins("https://www.example.com")
	if err != nil {
		t.Fatal(err)
	}
	reached := 0
	h := o.CORS(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached++
		w.WriteHeader(http.StatusOK)
	}), func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) })
	for _, tc := range []struct {
		name, method, origin, reqMethod string
		wantCode                        int
		wantACAO                        string
		wantReached                     bool
	}{
		{"no origin", "POST", "", "", 200, "", true},
		{"same origin", "POST", "http://chat.test", "", 200, "", true},
		{"listed origin", "POST", "https://www.example.com", "", 200, "https://www.example.com", true},
		{"listed preflight", "OPTIONS", "https://www.example.com", "POST", 204, "https://www.example.com", false},
		{"listed preflight of a DELETE", "OPTIONS", "https://www.example.com", "DELETE", 403, "", false},
		{"other origin", "POST", "https://evil.example", "", 403, "", false},
		{"other origin GET", "GET", "https://evil.example", "", 403, "", false},
		{"other origin preflight", "OPTIONS", "https://evil.example", "POST", 403, "", false},
		{"null origin", "POST", "null", "", 403, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reached = 0
			r := httptest.NewRequest(tc.method, "http://chat.test/genesys/2/chat/s", strings.NewReader(""))
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			if tc.reqMethod != "" {
				r.Header.Set("Access-Control-Request-Method", tc.reqMethod)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code != tc.wantCode || rec.Header().Get("Access-Control-Allow-Origin") != tc.wantACAO || (reached == 1) != tc.wantReached {
				t.Errorf("code %d ACAO %q reached %v; want %d %q %v", rec.Code, rec.Header().Get("Access-Control-Allow-Origin"),
					reached == 1, tc.wantCode, tc.wantACAO, tc.wantReached)
			}
			if rec.Header().Get("Vary") != "Origin" {
				t.Errorf("Vary = %q, want Origin", rec.Header().Get("Vary"))
			}
			if tc.wantCode == 204 && (rec.Header().Get("Access-Control-Allow-Methods") != "GET, POST" ||
				!strings.Contains(rec.Header().Get("Access-Control-Allow-Headers"), "Content-Type")) {
				t.Errorf("preflight headers %v", rec.Header())
			}
		})
	}
}

func TestSecurityHeaders(t *testing.T) {
	h := SecurityHeaders(http.NotFoundHandler(), "")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/nothing", nil))
	want := map[string]string{
		"Content-Security-Policy": DefaultCSP,
		"X-Frame-Options":         "DENY",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
	}
	for k, v := range want {
		if got := rec.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(DefaultCSP, "frame-ancestors 'none'") {
		t.Error("the default policy must forbid framing")
	}
	rec = httptest.NewRecorder()
	SecurityHeaders(http.NotFoundHandler(), "default-src 'none'").ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if got := rec.Header().Get("Content-Security-Policy"); got != "default-src 'none'" {
		t.Errorf("custom policy = %q", got)
	}
}

// FuzzParseOrigins: a parsed list never panics, and every origin it holds
// is listed under its own canonical form.
func FuzzParseOrigins(f *testing.F) {
	for _, s := range []string{"https://a.example", "http://[::1]:8080,https://b.example:443", "https://*.x", ",,", "http://A.example:80/"} {
		f.Add(s, "https://a.example")
	}
	f.Fuzz(func(t *testing.T, list, origin string) {
		o, err := ParseOrigins(list)
		if err != nil {
			if !errors.Is(err, ErrBadOrigin) {
				t.Fatalf("error %v is not ErrBadOrigin", err)
			}
			return
		}
		for k := range o.allowed {
			if !o.Listed(k) {
				t.Fatalf("canonical %q is not listed", k)
			}
		}
		_ = o.Listed(origin)
	})
}

func TestOriginsAllowed(t *testing.T) {
	o, err := ParseOrigins("https://www.example.com")
	if err != nil {
		t.Fatal(err)
	}
	for origin, want := range map[string]bool{"": true, "http://agent.test": true, "https://www.example.com": true, "https://evil.example": false} {
		r := httptest.NewRequest("GET", "http://agent.test/agent", nil)
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if got := o.Allowed(r); got != want {
			t.Errorf("Allowed with Origin %q = %v, want %v", origin, got, want)
		}
	}
}
