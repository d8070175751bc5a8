package ucsmock

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// SaveBatch saves many chats in one request (POST
// /ucs/v1/transcripts:batch); see BatchStore for the rules. Each result's
// Err is what Save would have returned for that chat. A batch larger than
// MaxBatchSaves, or one the server refuses as too large (413), is split and
// sent in parts; a part that then fails as a whole gives each of its saves
// that error, and SaveBatch returns an error only when the first part
// failed as a whole and nothing was sent after it.
func (c *Client) SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error) {
	out := make([]SaveBatchResult, len(reqs))
	items := make([]batchItem, 0, len(reqs))
	idx := make([]int, 0, len(reqs)) // position in reqs of each item
	for i, req := range reqs {
		if req.ChatID == "" {
			out[i].Err = fmt.Errorf("ucs save: %w", invalidf("missing chatId"))
			continue
		}
		raw, err := marshalEvents(req.Events)
		if err != nil {
			out[i].Err = fmt.Errorf("ucs save %s: %w", req.ChatID, err)
			continue
		}
		items = append(items, batchItem{ChatID: req.ChatID, Service: req.Service, Epoch: req.Epoch, Writer: req.Writer, Events: raw, Ended: req.Ended})
		idx = append(idx, i)
	}
	if len(items) == 0 {
		return out, nil
	}
	for start := 0; start < len(items); start += MaxBatchSaves {
		end := min(start+MaxBatchSaves, len(items))
		if err := c.sendBatch(ctx, items[start:end], idx[start:end], out); err != nil {
			if start == 0 && end == len(items) {
				return nil, err
			}
			for _, i := range idx[start:end] {
				out[i] = SaveBatchResult{Err: fmt.Errorf("ucs save %s: %w", reqs[i].ChatID, err)}
			}
		}
	}
	return out, nil
}

// sendBatch posts items (at most MaxBatchSaves) and fills out at idx. On a
// 413 it halves the batch; a single save's 413 is that save's error.
func (c *Client) sendBatch(ctx context.Context, items []batchItem, idx []int, out []SaveBatchResult) error {
	var ans batchAnswer
	err := c.do(ctx, http.MethodPost, "/ucs/v1/transcripts:batch", c.token, batchBody{Saves: items}, &ans)
	var tl *tooLargeAnswer
	switch {
	case errors.As(err, &tl) && len(items) > 1:
		h := len(items) / 2
		if err := c.sendBatch(ctx, items[:h], idx[:h], out); err != nil {
			return err
		}
		if err := c.sendBatch(ctx, items[h:], idx[h:], out); err != nil {
			for k, i := range idx[h:] {
				out[i] = SaveBatchResult{Err: fmt.Errorf("ucs save %s: %w", items[h+k].ChatID, err)}
			}
		}
		return nil
	case err != nil:
		return fmt.Errorf("ucs save batch of %d: %w", len(items), err)
	case len(ans.Results) != len(items):
		return fmt.Errorf("ucs save batch of %d: %w: %d results", len(items), ErrUnavailable, len(ans.Results))
	}
	for k, r := range ans.Results {
		i := idx[k]
		switch {
		case r.ChatID != items[k].ChatID:
			out[i].Err = fmt.Errorf("ucs save %s: %w: result %d is for chat %q", items[k].ChatID, ErrUnavailable, k, r.ChatID)
		case r.Status == http.StatusOK && r.Error == nil:
			out[i].Result = SaveResult{Saved: r.Saved, Unchanged: r.Unchanged, HighestIndex: r.HighestIndex}
		default:
			eb := errorBody{Error: "no error detail", Code: codeInternal}
			if r.Error != nil {
				eb = *r.Error
			}
			out[i].Err = fmt.Errorf("ucs save %s: %w", items[k].ChatID, bodyError(r.Status, eb))
		}
	}
	return nil
}

// tooLargeAnswer marks a 413 answer, which the batch client splits on.
type tooLargeAnswer struct{ err error }

func (e *tooLargeAnswer) Error() string { return e.err.Error() }
func (e *tooLargeAnswer) Unwrap() error { return e.err }
