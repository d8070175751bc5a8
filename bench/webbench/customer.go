package webbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hachat/hachat/bench/workers"
)

// customer is one chat as its customer holds it.
type customer struct {
	chatID, userID, secureKey string
	path                      string // /genesys/2/chat/{service}/{chatId}/
	// sendForm is the form of a send up to its clientMessageId: the
	// parameters that are the same for every message of the chat, encoded
	// once.
	sendForm string
}

// gmsAnswer is the part of a customer API answer the bench reads.
type gmsAnswer struct {
	StatusCode int    `json:"statusCode"`
	ChatID     string `json:"chatId"`
	UserID     string `json:"userId"`
	SecureKey  string `json:"secureKey"`
	Errors     []struct {
		Code   int    `json:"code"`
		Advice string `json:"advice"`
	} `json:"errors"`
}

// errRetry marks an answer the customer resends as is (statusCode 1, or
// the network failed).
var errRetry = errors.New("retry")

// answerOK is how every successful answer of webapi begins (statusCode is
// the body's first member): a send whose answer begins so needs no decoding.
var answerOK = []byte(`{"statusCode":0,`)

// bodies are buffers for answers, reused: a send's answer is read whole
// and dropped.
var bodies = sync.Pool{New: func() any { return new([]byte) }}

// post sends a form-encoded body to webapi and decodes the answer into ans
// (nil: a send, whose successful answer is not decoded); statusCode 1 and
// transport failures come back wrapping errRetry.
func (b *bench) post(ctx context.Context, path string, form []byte, ans *gmsAnswer) error {
	buf := bodies.Get().(*[]byte)
	defer bodies.Put(buf)
	status, body, err := b.web.post(ctx, path, form, (*buf)[:0])
	*buf = body[:0]
	if err != nil {
		if errors.Is(err, errTransport) {
			return fmt.Errorf("POST %s: %w: %w", path, errRetry, err)
		}
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if ans == nil {
		if status == http.StatusOK && bytes.HasPrefix(body, answerOK) {
			return nil
		}
		ans = new(gmsAnswer)
	}
	if err := json.Unmarshal(body, ans); err != nil {
		return fmt.Errorf("POST %s: HTTP %d: %w", path, status, err)
	}
	switch ans.StatusCode {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("POST %s: HTTP %d %v: %w", path, status, ans.Errors, errRetry)
	default:
		return fmt.Errorf("POST %s: HTTP %d statusCode %d %v", path, status, ans.StatusCode, ans.Errors)
	}
}

// postRetry is post, resent as is on errRetry until within has passed.
func (b *bench) postRetry(ctx context.Context, path string, form []byte, ans *gmsAnswer, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := b.post(ctx, path, form, ans)
		if err == nil || !errors.Is(err, errRetry) || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startChats starts every chat and opens its customer push channel.
func (b *bench) startChats(ctx context.Context) error {
	b.chats = make([]*customer, b.o.Chats)
	base := "/genesys/2/chat/" + url.PathEscape(b.service)
	return workers.Range(ctx, b.o.SetupConcurrency, 0, b.o.Chats, nil, func(ctx context.Context, i int) error {
		var ans gmsAnswer
		form := url.Values{"nickname": {"customer" + strconv.Itoa(i)}, "subject": {"bench"}}.Encode()
		if err := b.postRetry(ctx, base, []byte(form), &ans, 30*time.Second); err != nil {
			return fmt.Errorf("start chat %d: %w", i, err)
		}
		c := &customer{chatID: ans.ChatID, userID: ans.UserID, secureKey: ans.SecureKey, path: base + "/" + url.PathEscape(ans.ChatID) + "/"}
		c.sendForm = url.Values{"userId": {c.userID}, "secureKey": {c.secureKey}}.Encode() + "&message=" + url.QueryEscape(b.text) + "&clientMessageId="
		b.chats[i] = c
		b.started.Add(1)
		body, err := b.openPushRetry(ctx, c, 30*time.Second)
		if err != nil {
			return fmt.Errorf("chat %d: %w", i, err)
		}
		b.streams.Add(1)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.follow(c, body)
		}()
		return nil
	})
}

func (b *bench) openPush(ctx context.Context, c *customer, from uint64) (io.ReadCloser, error) {
	q := url.Values{"userId": {c.userID}, "secureKey": {c.secureKey}, "transcriptPosition": {strconv.FormatUint(from, 10)}}
	return openSSE(ctx, b.streamHTTP, b.webapi+c.path+"events?"+q.Encode(), nil)
}

// openPushRetry opens the push channel from index 1, trying again every
// 100ms (EventSource's retry) while webapi answers 503 (no core within its
// retry budget) or the network fails, for up to within.
func (b *bench) openPushRetry(ctx context.Context, c *customer, within time.Duration) (io.ReadCloser, error) {
	deadline := time.Now().Add(within)
	for {
		body, err := b.openPush(b.ctx, c, 1)
		if err == nil || time.Now().After(deadline) {
			return body, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// follow reads the customer's push channel until the bench closes,
// reopening it from the next index when it drops, as EventSource does.
// The stream lives in the bench's context, not in the setup's.
func (b *bench) follow(c *customer, body io.ReadCloser) {
	var next uint64 = 1
	for {
		stop := context.AfterFunc(b.ctx, func() { body.Close() })
		_ = readSSE(body, func(ev sseEvent) {
			if len(ev.Event) > 0 {
				if string(ev.Event) == "reconnecting" {
					b.reconn.Add(1)
				}
				return
			}
			if n, ok := parseIndex(ev.ID); ok && n >= next {
				next = n + 1
			}
			if id, ok := benchMessageID(ev.Data); ok {
				if i, ok := b.tr.messageNumber(id); ok {
					b.tr.delivered(i, false, time.Now().UnixNano())
				}
			}
		})
		stop()
		body.Close()
		if b.ctx.Err() != nil {
			return
		}
		b.drops.Add(1)
		for {
			select {
			case <-b.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond): // EventSource's retry
			}
			var err error
			if body, err = b.openPush(b.ctx, c, next); err == nil {
				break
			}
		}
	}
}

// send sends messages [from, to) with Concurrency senders, each message
// to chat i mod chats, resending with the same id on statusCode 1 or a
// network failure for up to 30s. It returns the number of messages that
// failed for good.
func (b *bench) send(ctx context.Context, from, to int, stop <-chan struct{}) int {
	var errs atomic.Int64
	_ = workers.Range(ctx, b.o.Concurrency, from, to, stop, func(ctx context.Context, i int) error {
		c := b.chats[i%len(b.chats)]
		form := appendMessageID(append(make([]byte, 0, len(c.sendForm)+16), c.sendForm...), i)
		b.tr.sent[i].Store(time.Now().UnixNano())
		b.tr.sentN.Add(1)
		if err := b.postRetry(ctx, c.path+"send", form, nil, 30*time.Second); err != nil {
			if errs.Add(1) == 1 {
				fmt.Fprintf(b.o.Progress, "  send %s failed: %v\n", messageID(i), err)
			}
			return nil
		}
		b.tr.acked[i].Store(time.Now().UnixNano())
		b.tr.ackedN.Add(1)
		return nil
	})
	return int(errs.Load())
}
