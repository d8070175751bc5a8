package ucsmock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"

	"github.com/hachat/hachat/telemetry"
)

// maxAnswer bounds how much of an answer the client reads.
const maxAnswer = 64 << 20

// Client is the typed HTTP client of a ucsmock server, used by the chat
// cores. Its spans join the caller's trace (otelhttp transport with the
// part's tracer and propagator). It is safe for concurrent use.
type Client struct {
	base  string
	hc    *http.Client
	token string // bearer token sent with every request but the admin ones
	// batchJSON is set once the server refused a binary batch body (a ucs
	// from before ContentTypeBatchProto): later batches go as JSON. The
	// clients of WithToken share it, as they share the server.
	batchJSON *atomic.Bool
	batchBufs *sync.Pool // binary batch bodies for reuse, shared as batchJSON
}

var _ BatchStore = (*Client)(nil)

// NewClient returns a client of the ucsmock server at baseURL (e.g.
// "http://127.0.0.1:7080"). httpClient may be nil (a client without a
// timeout: pass a context deadline per call); its transport is wrapped with
// otelhttp using tel's tracer and propagator when tel exports spans
// (telemetry.Tracing), else it only sends the caller's trace context (tel
// may be nil: no spans).
func NewClient(baseURL string, httpClient *http.Client, tel *telemetry.Telemetry) *Client {
	if tel == nil {
		tel = telemetry.Discard()
	}
	hc := &http.Client{}
	if httpClient != nil {
		c := *httpClient
		hc = &c
	}
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	if tel.Tracing() {
		hc.Transport = otelhttp.NewTransport(base,
			otelhttp.WithTracerProvider(tel.Tracer),
			otelhttp.WithPropagators(tel.Propagator),
			otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
				return "ucs " + r.Method + " " + spanPath(r.URL.Path)
			}),
		)
	} else {
		// No spans to export: only the caller's trace context travels, so
		// ucsmock's log lines still carry its trace_id.
		hc.Transport = tel.TraceTransport(base)
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), hc: hc, batchJSON: new(atomic.Bool), batchBufs: newBatchBufs()}
}

// WithToken returns a client like c that sends token (Authorization: Bearer
// <token>) with every save, epoch claim and read: the writer token for a
// core, which the server accepts for reads too, or the reader token for a
// client that only reads (--writer-token, --reader-token). An empty token
// sends none (c's behaviour). c itself is not changed; both share the HTTP
// client. The admin calls take their own token.
func (c *Client) WithToken(token string) *Client {
	cc := *c
	cc.token = token
	return &cc
}

// spanPath replaces the ids in a ucsmock path so that span names stay few.
func spanPath(p string) string {
	switch {
	case strings.HasPrefix(p, "/ucs/v1/transcripts/"):
		return "/ucs/v1/transcripts/{chatId}"
	case strings.HasPrefix(p, "/ucs/v1/epochs/") && strings.HasSuffix(p, "/claim"):
		return "/ucs/v1/epochs/{service}/claim"
	case strings.HasPrefix(p, "/ucs/v1/epochs/"):
		return "/ucs/v1/epochs/{service}"
	case strings.HasPrefix(p, "/ucs/v1/admin/gdpr/chats/"):
		return "/ucs/v1/admin/gdpr/chats/{chatId}"
	case strings.HasPrefix(p, "/ucs/v1/admin/"):
		return p
	}
	return p
}

// Save stores events of one chat; see Store for the rules. Errors: a
// *StaleEpochError (ErrStaleEpoch) when fenced, ErrConflict, ErrInvalid,
// ErrUnavailable (retry), ErrNonRecoverable, ErrForbidden (the server wants
// a writer token: see WithToken). Reads fail with ErrForbidden too when the
// server wants a reader token.
func (c *Client) Save(ctx context.Context, req SaveRequest) (SaveResult, error) {
	var res SaveResult
	if req.ChatID == "" {
		return res, fmt.Errorf("ucs save: %w", invalidf("missing chatId"))
	}
	raw, err := marshalEvents(req.Events)
	if err != nil {
		return res, fmt.Errorf("ucs save %s: %w", req.ChatID, err)
	}
	body := saveBody{Service: req.Service, Epoch: req.Epoch, Writer: req.Writer, Events: raw, Ended: req.Ended}
	if raw == nil {
		body.Events = []json.RawMessage{}
	}
	if err := c.do(ctx, http.MethodPost, "/ucs/v1/transcripts/"+url.PathEscape(req.ChatID), c.token, body, &res); err != nil {
		return SaveResult{}, fmt.Errorf("ucs save %s: %w", req.ChatID, err)
	}
	return res, nil
}

// Transcript returns the chat's stored events in index order, or ErrNotFound.
func (c *Client) Transcript(ctx context.Context, chatID string) (*Transcript, error) {
	if chatID == "" {
		return nil, fmt.Errorf("ucs transcript: %w", invalidf("missing chatId"))
	}
	var tb transcriptBody
	if err := c.do(ctx, http.MethodGet, "/ucs/v1/transcripts/"+url.PathEscape(chatID), c.token, nil, &tb); err != nil {
		return nil, fmt.Errorf("ucs transcript %s: %w", chatID, err)
	}
	events, err := unmarshalEvents(tb.Events)
	if err != nil {
		return nil, fmt.Errorf("ucs transcript %s: %w", chatID, err)
	}
	return &Transcript{ChatID: tb.ChatID, Service: tb.Service, Ended: tb.Ended, Writer: tb.Writer, Epoch: tb.Epoch, Events: events}, nil
}

// TranscriptXML returns the chat's Genesys-like XML transcript.
func (c *Client) TranscriptXML(ctx context.Context, chatID string) ([]byte, error) {
	if chatID == "" {
		return nil, fmt.Errorf("ucs transcript xml: %w", invalidf("missing chatId"))
	}
	var b []byte
	if err := c.do(ctx, http.MethodGet, "/ucs/v1/transcripts/"+url.PathEscape(chatID)+"?format=xml", c.token, nil, &b); err != nil {
		return nil, fmt.Errorf("ucs transcript xml %s: %w", chatID, err)
	}
	return b, nil
}

// Chats lists the stored chats that f keeps, in chat id order: e.g. the
// live chats of a service, which a new primary may restore.
func (c *Client) Chats(ctx context.Context, f ChatFilter) ([]ChatInfo, error) {
	q := url.Values{}
	if f.Service != "" {
		q.Set("service", f.Service)
	}
	switch {
	case f.Live && f.Ended:
		return nil, fmt.Errorf("ucs chats: %w", invalidf("live and ended exclude each other"))
	case f.Live:
		q.Set("ended", "false")
	case f.Ended:
		q.Set("ended", "true")
	}
	path := "/ucs/v1/chats"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var body struct {
		Chats []ChatInfo `json:"chats"`
	}
	if err := c.do(ctx, http.MethodGet, path, c.token, nil, &body); err != nil {
		return nil, fmt.Errorf("ucs chats: %w", err)
	}
	return body.Chats, nil
}

// ClaimEpoch sets the service's epoch to epoch iff it is currently expect
// (and epoch > expect). A lost claim is an *EpochConflictError
// (ErrEpochConflict) carrying the current epoch and holder. Retrying a claim
// that already succeeded succeeds.
func (c *Client) ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error) {
	var e Epoch
	if service == "" {
		return e, fmt.Errorf("ucs claim epoch: %w", invalidf("missing service"))
	}
	body := claimBody{Expect: expect, Epoch: epoch, Holder: holder}
	if err := c.do(ctx, http.MethodPost, "/ucs/v1/epochs/"+url.PathEscape(service)+"/claim", c.token, body, &e); err != nil {
		return Epoch{}, fmt.Errorf("ucs claim epoch %d of %s: %w", epoch, service, err)
	}
	return e, nil
}

// ClaimEpochIfSilent is ClaimEpoch refused (ErrHolderAlive) while another
// holder renewed within silent; see Store.
func (c *Client) ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error) {
	var e Epoch
	if service == "" {
		return e, fmt.Errorf("ucs claim epoch: %w", invalidf("missing service"))
	}
	body := claimBody{Expect: expect, Epoch: epoch, Holder: holder, IfSilentMs: max(silent.Milliseconds(), 1)}
	if err := c.do(ctx, http.MethodPost, "/ucs/v1/epochs/"+url.PathEscape(service)+"/claim", c.token, body, &e); err != nil {
		return Epoch{}, fmt.Errorf("ucs claim epoch %d of %s: %w", epoch, service, err)
	}
	return e, nil
}

// Renew records that holder, holding epoch, is alive; see Store.
func (c *Client) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	var e Epoch
	if service == "" {
		return e, fmt.Errorf("ucs renew epoch: %w", invalidf("missing service"))
	}
	if err := c.do(ctx, http.MethodPost, "/ucs/v1/epochs/"+url.PathEscape(service)+"/renew", c.token, renewBody{Epoch: epoch, Holder: holder}, &e); err != nil {
		return Epoch{}, fmt.Errorf("ucs renew epoch %d of %s: %w", epoch, service, err)
	}
	return e, nil
}

// Epoch returns the service's current epoch.
func (c *Client) Epoch(ctx context.Context, service string) (Epoch, error) {
	var e Epoch
	if service == "" {
		return e, fmt.Errorf("ucs epoch: %w", invalidf("missing service"))
	}
	if err := c.do(ctx, http.MethodGet, "/ucs/v1/epochs/"+url.PathEscape(service), c.token, nil, &e); err != nil {
		return Epoch{}, fmt.Errorf("ucs epoch of %s: %w", service, err)
	}
	return e, nil
}

// SetFaults replaces the injected faults (admin API, needs the admin token).
func (c *Client) SetFaults(ctx context.Context, token string, f Faults) error {
	if err := c.do(ctx, http.MethodPut, "/ucs/v1/admin/faults", token, f, nil); err != nil {
		return fmt.Errorf("ucs set faults: %w", err)
	}
	return nil
}

// ClearFaults removes every injected fault (admin API).
func (c *Client) ClearFaults(ctx context.Context, token string) error {
	if err := c.do(ctx, http.MethodDelete, "/ucs/v1/admin/faults", token, nil, nil); err != nil {
		return fmt.Errorf("ucs clear faults: %w", err)
	}
	return nil
}

// Faults returns the injected faults (admin API).
func (c *Client) Faults(ctx context.Context, token string) (Faults, error) {
	var f Faults
	if err := c.do(ctx, http.MethodGet, "/ucs/v1/admin/faults", token, nil, &f); err != nil {
		return Faults{}, fmt.Errorf("ucs faults: %w", err)
	}
	return f, nil
}

// Stats returns the server's counters (admin API).
func (c *Client) Stats(ctx context.Context, token string) (Stats, error) {
	var s Stats
	if err := c.do(ctx, http.MethodGet, "/ucs/v1/admin/stats", token, nil, &s); err != nil {
		return Stats{}, fmt.Errorf("ucs stats: %w", err)
	}
	return s, nil
}

// ExportChat returns one chat's transcript and what its customer gave
// (GDPR, admin API): ErrNotFound for an unknown chat, a *DeletedError
// (ErrDeleted) for a deleted one.
func (c *Client) ExportChat(ctx context.Context, token, chatID string) (ChatExport, error) {
	var b chatExportBody
	if err := c.do(ctx, http.MethodGet, "/ucs/v1/admin/gdpr/chats/"+url.PathEscape(chatID), token, nil, &b); err != nil {
		return ChatExport{}, fmt.Errorf("ucs export chat %s: %w", chatID, err)
	}
	ce, err := fromExportBody(b)
	if err != nil {
		return ChatExport{}, fmt.Errorf("ucs export chat %s: %w", chatID, err)
	}
	return ce, nil
}

// ExportCustomer returns every stored chat of the customer (GDPR, admin
// API); none is an empty list, not an error.
func (c *Client) ExportCustomer(ctx context.Context, token string, cu Customer) (CustomerExport, error) {
	var b customerExportBody
	if err := c.do(ctx, http.MethodPost, "/ucs/v1/admin/gdpr/customers:export", token, cu, &b); err != nil {
		return CustomerExport{}, fmt.Errorf("ucs export customer: %w", err)
	}
	out := CustomerExport{Customer: b.Customer, Chats: make([]ChatExport, 0, len(b.Chats))}
	for _, cb := range b.Chats {
		ce, err := fromExportBody(cb)
		if err != nil {
			return CustomerExport{}, fmt.Errorf("ucs export customer: %w", err)
		}
		out.Chats = append(out.Chats, ce)
	}
	return out, nil
}

// DeleteChat deletes one chat for good and leaves its tombstone (GDPR,
// admin API); deleting it again changes nothing (AlreadyDeleted).
func (c *Client) DeleteChat(ctx context.Context, token, chatID string) (DeleteResult, error) {
	var res DeleteResult
	if err := c.do(ctx, http.MethodDelete, "/ucs/v1/admin/gdpr/chats/"+url.PathEscape(chatID), token, nil, &res); err != nil {
		return DeleteResult{}, fmt.Errorf("ucs delete chat %s: %w", chatID, err)
	}
	return res, nil
}

// DeleteCustomer deletes every stored chat of the customer (GDPR, admin
// API).
func (c *Client) DeleteCustomer(ctx context.Context, token string, cu Customer) (DeleteResult, error) {
	var res DeleteResult
	if err := c.do(ctx, http.MethodPost, "/ucs/v1/admin/gdpr/customers:delete", token, cu, &res); err != nil {
		return DeleteResult{}, fmt.Errorf("ucs delete customer: %w", err)
	}
	return res, nil
}

// do sends one request. in (if not nil) is encoded as JSON; out receives the
// JSON answer (or the raw bytes when out is *[]byte). Failures are mapped to
// the package's sentinel errors.
func (c *Client) do(ctx context.Context, method, path, token string, in, out any) error {
	var body []byte
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body, ct = b, "application/json"
	}
	return c.send(ctx, method, path, token, ct, body, out)
}

// send is do with a body already encoded as contentType (none if empty).
func (c *Client) send(ctx context.Context, method, path, token, contentType string, in []byte, out any) error {
	var body io.Reader
	if contentType != "" {
		body = bytes.NewReader(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("read answer: %w", ctx.Err())
		}
		return fmt.Errorf("%w: read answer: %w", ErrUnavailable, err)
	}
	if resp.StatusCode/100 != 2 {
		return answerError(resp.StatusCode, b)
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = b
		return nil
	default:
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
		return nil
	}
}

// answerError maps a failed answer to the package's errors.
func answerError(status int, b []byte) error {
	var eb errorBody
	if err := json.Unmarshal(b, &eb); err != nil || eb.Error == "" {
		eb.Error = strings.TrimSpace(string(b))
		if len(eb.Error) > 200 {
			eb.Error = eb.Error[:200]
		}
	}
	return bodyError(status, eb)
}

// bodyError maps a failed answer's status and decoded body to the
// package's errors.
func bodyError(status int, eb errorBody) error {
	msg := fmt.Sprintf("HTTP %d: %s", status, eb.Error)
	switch {
	case status == http.StatusConflict && eb.Code == codeStaleEpoch:
		return &StaleEpochError{Epoch: eb.Epoch, Holder: eb.Holder}
	case status == http.StatusConflict && eb.Code == codeEpochConflict:
		return &EpochConflictError{Epoch: eb.Epoch, Holder: eb.Holder, HolderAlive: eb.HolderAlive, HeardAgo: time.Duration(eb.HeardAgoMs) * time.Millisecond}
	case status == http.StatusConflict:
		return fmt.Errorf("%w: %s", ErrConflict, msg)
	case status == http.StatusGone && eb.Code == codeDeleted:
		de := &DeletedError{}
		if eb.Tombstone != nil {
			de.Tombstone = *eb.Tombstone
		}
		return de
	case status == http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrNotFound, msg)
	case status == http.StatusUnprocessableEntity:
		return fmt.Errorf("%w: %s", ErrNonRecoverable, msg)
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return fmt.Errorf("%w: %s", ErrForbidden, msg)
	case status == http.StatusTooManyRequests || status >= 500:
		return fmt.Errorf("%w: %s", ErrUnavailable, msg)
	case status == http.StatusRequestEntityTooLarge:
		return &tooLargeAnswer{err: fmt.Errorf("%w: %s", ErrInvalid, msg)}
	case status >= 400:
		return fmt.Errorf("%w: %s", ErrInvalid, msg)
	}
	return errors.New(msg)
}
