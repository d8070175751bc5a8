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
	"strings"
	"sync/atomic"
	"time"
)

// customer is one chat as its customer holds it.
type customer struct {
	chatID, userID, secureKey string
	path                      string // /genesys/2/chat/{service}/{chatId}/
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

// post sends a form to webapi and decodes the answer; statusCode 1 and
// transport failures come back wrapping errRetry.
func (b *bench) post(ctx context.Context, path string, form url.Values) (gmsAnswer, error) {
	var ans gmsAnswer
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.webapi+path, strings.NewReader(form.Encode()))
	if err != nil {
		return ans, fmt.Errorf("POST %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := b.sendHTTP.Do(req)
	if err != nil {
		return ans, fmt.Errorf("POST %s: %w: %w", path, errRetry, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return ans, fmt.Errorf("POST %s: %w: %w", path, errRetry, err)
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return ans, fmt.Errorf("POST %s: HTTP %d: %w", path, resp.StatusCode, err)
	}
	switch ans.StatusCode {
	case 0:
		return ans, nil
	case 1:
		return ans, fmt.Errorf("POST %s: HTTP %d %v: %w", path, resp.StatusCode, ans.Errors, errRetry)
	default:
		return ans, fmt.Errorf("POST %s: HTTP %d statusCode %d %v", path, resp.StatusCode, ans.StatusCode, ans.Errors)
	}
}

// postRetry is post, resent as is on errRetry until within has passed.
func (b *bench) postRetry(ctx context.Context, path string, form url.Values, within time.Duration) (gmsAnswer, error) {
	deadline := time.Now().Add(within)
	for {
		ans, err := b.post(ctx, path, form)
		if err == nil || !errors.Is(err, errRetry) || time.Now().After(deadline) || ctx.Err() != nil {
			return ans, err
		}
		select {
		case <-ctx.Done():
			return ans, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startChats starts every chat and opens its customer push channel.
func (b *bench) startChats(ctx context.Context) error {
	b.chats = make([]*customer, b.o.Chats)
	base := "/genesys/2/chat/" + url.PathEscape(b.service)
	return parallel(ctx, b.o.SetupConcurrency, 0, b.o.Chats, nil, func(ctx context.Context, i int) error {
		ans, err := b.postRetry(ctx, base, url.Values{"nickname": {"customer" + strconv.Itoa(i)}, "subject": {"bench"}}, 30*time.Second)
		if err != nil {
			return fmt.Errorf("start chat %d: %w", i, err)
		}
		c := &customer{chatID: ans.ChatID, userID: ans.UserID, secureKey: ans.SecureKey, path: base + "/" + url.PathEscape(ans.ChatID) + "/"}
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
	cmidKey := []byte(`"clientMessageId":"`)
	for {
		stop := context.AfterFunc(b.ctx, func() { body.Close() })
		_ = readSSE(body, func(ev sseEvent) {
			if len(ev.Event) > 0 {
				if string(ev.Event) == "reconnecting" {
					b.reconn.Add(1)
				}
				return
			}
			if n, err := strconv.ParseUint(string(ev.ID), 10, 64); err == nil && n >= next {
				next = n + 1
			}
			k := bytes.Index(ev.Data, cmidKey)
			if k < 0 {
				return
			}
			rest := ev.Data[k+len(cmidKey):]
			if e := bytes.IndexByte(rest, '"'); e > 0 {
				if i, ok := b.tr.messageNumber(rest[:e]); ok {
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
	_ = parallel(ctx, b.o.Concurrency, from, to, stop, func(ctx context.Context, i int) error {
		c := b.chats[i%len(b.chats)]
		form := url.Values{"userId": {c.userID}, "secureKey": {c.secureKey}, "message": {b.text}, "clientMessageId": {messageID(i)}}
		b.tr.sent[i].Store(time.Now().UnixNano())
		b.tr.sentN.Add(1)
		if _, err := b.postRetry(ctx, c.path+"send", form, 30*time.Second); err != nil {
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
