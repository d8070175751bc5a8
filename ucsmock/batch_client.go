package ucsmock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
)

// SaveBatch saves many chats in one request (POST
// /ucs/v1/transcripts:batch); see BatchStore for the rules. Each result's
// Err is what Save would have returned for that chat. The body is binary
// (ContentTypeBatchProto); a server that refuses it as a whole with 400 or
// 415 (one from before the binary form) gets this and every later batch of
// the client as JSON. A batch larger than MaxBatchSaves, or one the server
// refuses as too large (413), is split and sent in parts; a part that then
// fails as a whole gives each of its saves that error, and SaveBatch
// returns an error only when the first part failed as a whole and nothing
// was sent after it.
func (c *Client) SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error) {
	out := make([]SaveBatchResult, len(reqs))
	b := &outBatch{reqs: reqs, idx: make([]int, 0, len(reqs))}
	binary := !c.batchJSON.Load()
	if binary {
		b.buf = c.batchBufs.Get().(*[]byte)
		defer func() {
			if cap(*b.buf) <= maxPooledBatchBuf {
				c.batchBufs.Put(b.buf)
			}
		}()
		*b.buf = (*b.buf)[:0]
		b.offs = make([]int, 0, len(reqs)+1)
		b.offs = append(b.offs, 0)
	}
	for i, req := range reqs {
		if req.ChatID == "" {
			out[i].Err = fmt.Errorf("ucs save: %w", invalidf("missing chatId"))
			continue
		}
		if binary {
			var err error
			if *b.buf, err = appendSaveProto(*b.buf, req); err != nil {
				out[i].Err = fmt.Errorf("ucs save %s: %w", req.ChatID, err)
				continue
			}
			b.offs = append(b.offs, len(*b.buf))
		}
		b.idx = append(b.idx, i)
	}
	if len(b.idx) == 0 {
		return out, nil
	}
	for start := 0; start < len(b.idx); start += MaxBatchSaves {
		end := min(start+MaxBatchSaves, len(b.idx))
		if err := c.sendBatch(ctx, b, start, end, out); err != nil {
			if start == 0 && end == len(b.idx) {
				return nil, err
			}
			for _, i := range b.idx[start:end] {
				out[i] = SaveBatchResult{Err: fmt.Errorf("ucs save %s: %w", reqs[i].ChatID, err)}
			}
		}
	}
	return out, nil
}

// maxPooledBatchBuf bounds the body buffers SaveBatch keeps for reuse.
const maxPooledBatchBuf = 1 << 20

// newBatchBufs returns the pool of a client's binary batch bodies.
func newBatchBufs() *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}
}

// outBatch is a batch on its way: the saves to send (reqs at idx, in
// order) and, in binary form, their encoding: save k is
// (*buf)[offs[k]:offs[k+1]], so that any run of saves is one slice of it.
type outBatch struct {
	reqs []SaveRequest
	idx  []int
	buf  *[]byte
	offs []int
}

// body returns the body of saves lo..hi-1 and its content type: binary
// unless the client fell back to JSON (or the batch was never encoded as
// binary). A save JSON cannot encode gets its error in out and is left
// out; sent lists the positions (in idx) of the saves in the body.
func (c *Client) body(b *outBatch, lo, hi int, out []SaveBatchResult) (ct string, body []byte, sent []int, err error) {
	if b.buf != nil && !c.batchJSON.Load() {
		sent = make([]int, 0, hi-lo)
		for k := lo; k < hi; k++ {
			sent = append(sent, k)
		}
		return ContentTypeBatchProto, (*b.buf)[b.offs[lo]:b.offs[hi]], sent, nil
	}
	items := make([]batchItem, 0, hi-lo)
	for k := lo; k < hi; k++ {
		req := b.reqs[b.idx[k]]
		raw, err := marshalEvents(req.Events)
		if err != nil {
			out[b.idx[k]].Err = fmt.Errorf("ucs save %s: %w", req.ChatID, err)
			continue
		}
		items = append(items, batchItem{ChatID: req.ChatID, Service: req.Service, Epoch: req.Epoch, Writer: req.Writer, Events: raw, Ended: req.Ended})
		sent = append(sent, k)
	}
	if len(items) == 0 {
		return "", nil, nil, nil
	}
	body, err = json.Marshal(batchBody{Saves: items})
	if err != nil {
		return "", nil, nil, fmt.Errorf("encode request: %w", err)
	}
	return "application/json", body, sent, nil
}

// sendBatch posts saves lo..hi-1 of b (at most MaxBatchSaves) and fills
// out. On a 413 it halves them; a single save's 413 is that save's error.
func (c *Client) sendBatch(ctx context.Context, b *outBatch, lo, hi int, out []SaveBatchResult) error {
	ct, body, sent, err := c.body(b, lo, hi, out)
	if err != nil || len(sent) == 0 {
		return err
	}
	var ans batchAnswer
	err = c.send(ctx, http.MethodPost, "/ucs/v1/transcripts:batch", c.token, ct, body, &ans)
	var tl *tooLargeAnswer
	switch {
	case err != nil && ct == ContentTypeBatchProto && refusedForm(err):
		// A ucs that does not know the binary form: JSON from now on.
		c.batchJSON.Store(true)
		return c.sendBatch(ctx, b, lo, hi, out)
	case errors.As(err, &tl) && hi-lo > 1:
		h := lo + (hi-lo)/2
		if err := c.sendBatch(ctx, b, lo, h, out); err != nil {
			return err
		}
		if err := c.sendBatch(ctx, b, h, hi, out); err != nil {
			for _, i := range b.idx[h:hi] {
				out[i] = SaveBatchResult{Err: fmt.Errorf("ucs save %s: %w", b.reqs[i].ChatID, err)}
			}
		}
		return nil
	case err != nil:
		return fmt.Errorf("ucs save batch of %d: %w", len(sent), err)
	case len(ans.Results) != len(sent):
		return fmt.Errorf("ucs save batch of %d: %w: %d results", len(sent), ErrUnavailable, len(ans.Results))
	}
	for n, r := range ans.Results {
		i := b.idx[sent[n]]
		chat := b.reqs[i].ChatID
		switch {
		case r.ChatID != chat:
			out[i].Err = fmt.Errorf("ucs save %s: %w: result %d is for chat %q", chat, ErrUnavailable, n, r.ChatID)
		case r.Status == http.StatusOK && r.Error == nil:
			out[i].Result = SaveResult{Saved: r.Saved, Unchanged: r.Unchanged, HighestIndex: r.HighestIndex}
		default:
			eb := errorBody{Error: "no error detail", Code: codeInternal}
			if r.Error != nil {
				eb = *r.Error
			}
			out[i].Err = fmt.Errorf("ucs save %s: %w", chat, bodyError(r.Status, eb))
		}
	}
	return nil
}

// refusedForm reports whether err is a server's refusal of a whole binary
// body as malformed or of an unknown type (400, 415): what a ucs from
// before the binary form answers. A current one never refuses a body this
// client encoded.
func refusedForm(err error) bool {
	var tl *tooLargeAnswer
	return errors.Is(err, ErrInvalid) && !errors.As(err, &tl) // 400 and 415 (bodyError); not 413
}

// tooLargeAnswer marks a 413 answer, which the batch client splits on.
type tooLargeAnswer struct{ err error }

func (e *tooLargeAnswer) Error() string { return e.err.Error() }
func (e *tooLargeAnswer) Unwrap() error { return e.err }
