package interaction

import (
	"errors"
	"net/http"
)

// securityHeaders sets the headers every answer carries: the desktop may
// load only its own script and style, talk only to this server, and never
// be framed; no answer is content-sniffed; no referrer leaks a URL.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "+
			"img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// auditWriter records, for the security log, the caller's claimed or proven
// agent id and the error a handler answered.
type auditWriter struct {
	http.ResponseWriter
	status int
	agent  string
	err    error
}

// WriteHeader records the status.
func (w *auditWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (Flush).
func (w *auditWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// noteCaller records which agent id a request is for (claimed at login,
// proven by a session), for the security log.
func noteCaller(w http.ResponseWriter, agent string) {
	if aw, ok := w.(*auditWriter); ok {
		aw.agent = agent
	}
}

// audit logs every refused request (401, 403, and 429 of the login
// throttle) as a security event: attribute security=true, the status, the
// route, the client address, the agent id claimed or proven, and why.
func (s *Server) audit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		aw := &auditWriter{ResponseWriter: w}
		next.ServeHTTP(aw, r)
		if aw.status != http.StatusUnauthorized && aw.status != http.StatusForbidden &&
			!(aw.status == http.StatusTooManyRequests && errors.Is(aw.err, ErrTooMany) && r.URL.Path == "/agent/v1/login") {
			return
		}
		reason := ""
		if aw.err != nil {
			reason = aw.err.Error()
		}
		s.metrics.refusals.WithLabelValues(http.StatusText(aw.status)).Inc()
		s.log.Warn("request refused", "security", true, "status", aw.status, "method", r.Method, "path", r.URL.Path,
			"remote", clientAddr(r), "agent", aw.agent, "reason", reason)
	})
}
