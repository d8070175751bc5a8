package webbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// sseEvent is one Server-Sent Event: its name ("" for an unnamed event)
// and its data lines joined by newlines.
type sseEvent struct {
	ID    []byte
	Event []byte
	Data  []byte
}

// readSSE reads a text/event-stream from r and calls emit for every event
// until r ends or fails. The event's slices are valid only during emit. A
// small buffer per stream: the bench holds thousands of them.
func readSSE(r io.Reader, emit func(sseEvent)) error {
	br := bufio.NewReaderSize(r, 4096)
	var ev sseEvent
	var data []byte
	var haveData bool
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An over-long line: gather it whole.
			long := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if haveData || len(ev.Event) > 0 {
				ev.Data = data
				emit(ev)
			}
			ev, data, haveData = sseEvent{}, data[:0], false
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "id":
			ev.ID = append(ev.ID[:0], value...)
		case "event":
			ev.Event = append(ev.Event[:0], value...)
		case "data":
			if haveData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			haveData = true
		}
	}
}

// openSSE opens an event stream at url (with header) on client; the caller
// closes the body.
func openSSE(ctx context.Context, client *http.Client, url string, header http.Header) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("push channel: %w", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("push channel: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("push channel: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	return resp.Body, nil
}

// messageIDKey starts the clientMessageId member of a bench message's JSON
// (the bench's ids, "w" and a number, need no escaping).
var messageIDKey = []byte(`"clientMessageId":"w`)

// benchMessageID finds the clientMessageId of a bench message in an event's
// JSON data without decoding it: one search per event, where a decode
// would cost the load generator more than the server's encode. ok is false
// for data without a bench message id.
func benchMessageID(data []byte) (id []byte, ok bool) {
	k := bytes.Index(data, messageIDKey)
	if k < 0 {
		return nil, false
	}
	rest := data[k+len(messageIDKey)-1:] // from the 'w'
	e := bytes.IndexByte(rest, '"')
	if e <= 1 {
		return nil, false
	}
	return rest[:e], true
}

// parseIndex reads an event id, a transcript index, without allocating.
func parseIndex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}
