package ucsmock

import (
	"errors"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// gdprAdmin guards a GDPR route with the admin token (as every admin
// route) and counts a refusal under its op and scope.
func (s *Server) gdprAdmin(op, scope string, h http.HandlerFunc) http.HandlerFunc {
	guarded := s.admin(h)
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken == "" || !bearer(r, s.cfg.AdminToken) {
			s.metrics.gdpr.WithLabelValues(op, scope, "unauthorized").Inc()
		}
		guarded(w, r)
	}
}

// gdprFailed answers a failed GDPR request and counts it.
func (s *Server) gdprFailed(w http.ResponseWriter, r *http.Request, op, scope string, err error) {
	result := "error"
	switch {
	case errors.Is(err, ErrDeleted):
		result = "deleted"
	case errors.Is(err, ErrNotFound):
		result = "not_found"
	case errors.Is(err, ErrInvalid):
		result = "invalid"
	}
	s.metrics.gdpr.WithLabelValues(op, scope, result).Inc()
	s.log.InfoContext(r.Context(), "gdpr request failed", "op", op, "scope", scope, "result", result, "chat", r.PathValue("chatId"), "remote", r.RemoteAddr)
	s.writeErr(w, err)
}

// gdprCustomer reads the selector from the JSON body: {"email": ADDR} or
// {"userDataKey": KEY, "userDataValue": VALUE}. The personal data travels
// in the body, never in the URL (access logs, proxies, client spans).
// Unknown members, trailing data and a body over 64 KiB are refused.
func gdprCustomer(w http.ResponseWriter, r *http.Request) (Customer, error) {
	var c Customer
	if err := decodeJSON(w, r, 64<<10, &c); err != nil {
		return Customer{}, err
	}
	return c.normalized()
}

// handleExportChat is GET /ucs/v1/admin/gdpr/chats/{chatId}.
func (s *Server) handleExportChat(w http.ResponseWriter, r *http.Request) {
	chatID := r.PathValue("chatId")
	trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("chat.id", chatID))
	err := validChatRef(chatID)
	var ce ChatExport
	if err == nil {
		ce, err = storeExportChat(r.Context(), s.store, chatID)
	}
	var body chatExportBody
	if err == nil {
		body, err = toExportBody(ce)
	}
	if err != nil {
		s.gdprFailed(w, r, "export", scopeChat, err)
		return
	}
	s.metrics.gdpr.WithLabelValues("export", scopeChat, "ok").Inc()
	s.metrics.gdprChats.WithLabelValues("export").Inc()
	s.log.InfoContext(r.Context(), "gdpr export", "scope", scopeChat, "chat", chatID, "events", len(ce.Events), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, body)
}

// handleExportCustomer is POST /ucs/v1/admin/gdpr/customers:export.
func (s *Server) handleExportCustomer(w http.ResponseWriter, r *http.Request) {
	c, err := gdprCustomer(w, r)
	var ex CustomerExport
	if err == nil {
		ex, err = storeExportCustomer(r.Context(), s.store, c)
	}
	body := customerExportBody{Customer: c, Chats: []chatExportBody{}}
	for _, ce := range ex.Chats {
		if err != nil {
			break
		}
		var b chatExportBody
		b, err = toExportBody(ce)
		body.Chats = append(body.Chats, b)
	}
	if err != nil {
		s.gdprFailed(w, r, "export", scopeCustomer, err)
		return
	}
	s.metrics.gdpr.WithLabelValues("export", scopeCustomer, "ok").Inc()
	s.metrics.gdprChats.WithLabelValues("export").Add(float64(len(body.Chats)))
	s.log.InfoContext(r.Context(), "gdpr export", "scope", scopeCustomer, "by", c.String(), "chats", len(body.Chats), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, body)
}

// handleDeleteChat is DELETE /ucs/v1/admin/gdpr/chats/{chatId}.
func (s *Server) handleDeleteChat(w http.ResponseWriter, r *http.Request) {
	chatID := r.PathValue("chatId")
	trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("chat.id", chatID))
	err := validChatRef(chatID)
	var res DeleteResult
	if err == nil {
		res, err = storeDeleteChat(r.Context(), s.store, chatID, time.Now().UnixMilli())
	}
	if err != nil {
		s.gdprFailed(w, r, "delete", scopeChat, err)
		return
	}
	s.metrics.gdpr.WithLabelValues("delete", scopeChat, "ok").Inc()
	s.metrics.gdprChats.WithLabelValues("delete").Add(float64(len(res.Deleted)))
	for _, ts := range res.Deleted {
		s.log.InfoContext(r.Context(), "gdpr delete: chat deleted, tombstone written", "scope", scopeChat, "chat", ts.ChatID, "service", ts.Service,
			"epoch", ts.Epoch, "events", ts.Events, "remote", r.RemoteAddr)
	}
	for _, ts := range res.AlreadyDeleted {
		s.log.InfoContext(r.Context(), "gdpr delete: chat was already deleted", "chat", ts.ChatID, "remote", r.RemoteAddr)
	}
	writeJSON(w, http.StatusOK, res)
}

// handleDeleteCustomer is POST /ucs/v1/admin/gdpr/customers:delete.
func (s *Server) handleDeleteCustomer(w http.ResponseWriter, r *http.Request) {
	c, err := gdprCustomer(w, r)
	var res DeleteResult
	if err == nil {
		res, err = storeDeleteCustomer(r.Context(), s.store, c, time.Now().UnixMilli())
	}
	if err != nil {
		s.gdprFailed(w, r, "delete", scopeCustomer, err)
		return
	}
	s.metrics.gdpr.WithLabelValues("delete", scopeCustomer, "ok").Inc()
	s.metrics.gdprChats.WithLabelValues("delete").Add(float64(len(res.Deleted)))
	ids := make([]string, len(res.Deleted))
	for i, ts := range res.Deleted {
		ids[i] = ts.ChatID
	}
	s.log.InfoContext(r.Context(), "gdpr delete: customer's chats deleted, tombstones written", "scope", scopeCustomer, "by", c.String(),
		"chats", len(ids), "chat_ids", ids, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, res)
}
