package webfloor

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hachat/hachat/jsonenc"
	"github.com/hachat/hachat/sse"
)

// customerID is the participant id of every chat's customer, as the chat
// core numbers a chat's first participant.
const customerID = "p1"

// maxForm bounds a customer call's form.
const maxForm = 64 << 10

// eventSize is the capacity an event's data or an answer starts with: a
// 64-byte message's fit (about 220 bytes) without growing.
const eventSize = 320

// GMS status codes and error codes of the answers the floor refuses with
// (webapi's).
const (
	statusRetry   = 1 // a transient failure: send the same request again
	statusRefused = 2 // the request cannot succeed as it is

	codeMalformed   = 101
	codeInvalid     = 102
	codeUnknownChat = 104
	codeForbidden   = 105
	codeUnavailable = 108
)

// chat is one chat: its customer, its push channel and the agent who
// accepted it. A send holds mu while it hands the event to both push
// channels, so that each gets the chat's events in index order; an
// agent's mu is taken under it, never the other way round.
type chat struct {
	id, key, service, nickname string

	mu      sync.Mutex
	next    uint64  // the index of the next event
	push    *stream // the customer's push channel, nil when closed
	agent   *agent  // who accepted the chat, nil before
	offered *agent  // who it was offered to
}

// handleStart starts a chat: POST /genesys/2/chat/{service} with the form
// nickname (required) and subject, answered as webapi answers it. The chat
// is offered to the next ready agent, in turn; with no agent ready the
// answer is statusCode 1 (retry).
func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	form, err := readForm(w, r)
	if err != nil {
		writeRefusal(w, http.StatusBadRequest, codeMalformed, err.Error())
		return
	}
	nickname := form.get("nickname")
	if nickname == "" {
		writeRefusal(w, http.StatusBadRequest, codeInvalid, "nickname is required")
		return
	}
	c := &chat{id: newID(), key: newID(), service: r.PathValue("service"), nickname: nickname, next: 2}
	s.mu.Lock()
	if len(s.ready) == 0 {
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, statusRetry, codeUnavailable, "no agent is ready")
		return
	}
	ag := s.ready[s.turn%len(s.ready)]
	s.turn++
	c.offered = ag
	s.chats[c.id] = c
	s.mu.Unlock()

	offer := append([]byte(`{"chatId":`), jsonenc.AppendString(nil, c.id)...)
	offer = append(append(offer, `,"nickname":`...), jsonenc.AppendString(nil, nickname)...)
	offer = append(offer, '}')
	_ = ag.send(r.Context(), event{name: "offer", data: offer}) // an agent without a push channel misses it, as it would an offer timing out

	b := c.appendAnswer(nil, 1, 0)
	writeAnswer(w, b)
}

// handleSend sends a message: POST .../{chatId}/send with the form
// userId, secureKey, message (required) and clientMessageId. The message's
// event goes to the customer's push channel (an unnamed event, id = its
// index, webapi's message JSON) and to the accepting agent's (a "chat"
// event, interaction's JSON), in the order of the indexes; the answer is
// webapi's.
func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	c, form, ok := s.customerChat(w, r)
	if !ok {
		return
	}
	text := form.get("message")
	if text == "" {
		writeRefusal(w, http.StatusBadRequest, codeInvalid, "message is required")
		return
	}
	msgID := form.get("clientMessageId")
	now := time.Now().UnixMilli()

	c.mu.Lock()
	idx := c.next
	c.next++
	id := strconv.FormatUint(idx, 10)
	var err error
	if c.push != nil {
		err = ignoreGone(c.push.push(r.Context(), event{id: id, data: c.appendMessage(make([]byte, 0, eventSize), idx, now, text, msgID)}))
	}
	if err == nil && c.agent != nil {
		err = c.agent.send(r.Context(), event{name: "chat", data: c.appendChatEvent(make([]byte, 0, eventSize), idx, now, text, msgID)})
	}
	c.mu.Unlock()
	if err != nil {
		return // the request ended while a push channel was behind
	}
	writeAnswer(w, c.appendAnswer(make([]byte, 0, eventSize), idx, idx))
}

// handleCustomerEvents serves the customer's push channel: GET
// .../{chatId}/events?userId=&secureKey=. It carries the chat's events
// from its opening on (no transcript is kept) and webapi's "heartbeat"
// event when idle. A channel opened again replaces the one before.
func (s *Server) handleCustomerEvents(w http.ResponseWriter, r *http.Request) {
	c, ok := s.chat(w, r, r.URL.Query().Get("userId"), r.URL.Query().Get("secureKey"))
	if !ok {
		return
	}
	newStream(customerBuffer, customerBurst).serveIn(r.Context(), w, &c.mu, &c.push, func(out *sse.Writer) error {
		c.mu.Lock()
		next := c.next
		c.mu.Unlock()
		b := strconv.AppendUint(append([]byte(nil), `{"nextPosition":`...), next, 10)
		b = strconv.AppendInt(append(b, `,"utcTime":`...), time.Now().UnixMilli(), 10)
		return out.Event("", "heartbeat", append(b, '}'))
	})
}

// customerChat reads a customer call's form and finds its chat.
func (s *Server) customerChat(w http.ResponseWriter, r *http.Request) (*chat, form, bool) {
	f, err := readForm(w, r)
	if err != nil {
		writeRefusal(w, http.StatusBadRequest, codeMalformed, err.Error())
		return nil, nil, false
	}
	c, ok := s.chat(w, r, f.get("userId"), f.get("secureKey"))
	return c, f, ok
}

// chat finds the chat of the path and checks the customer's credentials,
// refusing as webapi does when they do not fit.
func (s *Server) chat(w http.ResponseWriter, r *http.Request, userID, key string) (*chat, bool) {
	s.mu.RLock()
	c := s.chats[r.PathValue("chatId")]
	s.mu.RUnlock()
	switch {
	case userID == "" || key == "":
		writeRefusal(w, http.StatusBadRequest, codeInvalid, "userId and secureKey are required")
	case c == nil || c.service != r.PathValue("service"):
		writeRefusal(w, http.StatusNotFound, codeUnknownChat, "no such chat")
	case userID != customerID || key != c.key:
		writeRefusal(w, http.StatusForbidden, codeForbidden, "userId and secureKey do not match the chat")
	default:
		return c, true
	}
	return nil, false
}

// appendAnswer appends webapi's answer to a chat start (index 0) or a send.
func (c *chat) appendAnswer(b []byte, next, index uint64) []byte {
	b = append(b, `{"statusCode":0,"chatId":`...)
	b = jsonenc.AppendString(b, c.id)
	b = append(b, `,"userId":"`+customerID+`","secureKey":`...)
	b = jsonenc.AppendString(b, c.key)
	b = append(b, `,"alias":"`+Alias+`","nextPosition":`...)
	b = strconv.AppendUint(b, next, 10)
	b = append(b, `,"chatEnded":false`...)
	if index != 0 {
		b = strconv.AppendUint(append(b, `,"index":`...), index, 10)
	}
	return append(b, "}\n"...)
}

// appendMessage appends a customer message as webapi's push channel
// carries it.
func (c *chat) appendMessage(b []byte, index uint64, utcMs int64, text, msgID string) []byte {
	b = strconv.AppendUint(append(b, `{"index":`...), index, 10)
	b = jsonenc.AppendString(append(b, `,"type":"Message","text":`...), text)
	b = strconv.AppendInt(append(b, `,"utcTime":`...), utcMs, 10)
	b = jsonenc.AppendString(append(b, `,"from":{"nickname":`...), c.nickname)
	b = append(b, `,"participantId":"`+customerID+`","type":"Client"}`...)
	if msgID != "" {
		b = jsonenc.AppendString(append(b, `,"clientMessageId":`...), msgID)
	}
	return append(b, '}')
}

// appendChatEvent appends a customer message as interaction's "chat" event
// carries it to the agent.
func (c *chat) appendChatEvent(b []byte, index uint64, utcMs int64, text, msgID string) []byte {
	b = jsonenc.AppendString(append(b, `{"chatId":`...), c.id)
	b = strconv.AppendUint(append(b, `,"index":`...), index, 10)
	b = jsonenc.AppendString(append(b, `,"kind":"Message","text":`...), text)
	b = append(b, `,"from":{"participantId":"`+customerID+`","nickname":`...)
	b = jsonenc.AppendString(b, c.nickname)
	b = append(b, `,"type":"Customer"},"visibility":"all","utcTime":`...)
	b = strconv.AppendInt(b, utcMs, 10)
	if msgID != "" {
		b = jsonenc.AppendString(append(b, `,"clientMessageId":`...), msgID)
	}
	return append(b, '}')
}

// writeAnswer writes a 200 JSON answer.
func writeAnswer(w http.ResponseWriter, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// writeRefusal writes a GMS answer with statusCode 2: the request cannot
// succeed as it is.
func writeRefusal(w http.ResponseWriter, status, code int, advice string) {
	writeError(w, status, statusRefused, code, advice)
}

// writeError writes a GMS error answer.
func writeError(w http.ResponseWriter, status, statusCode, code int, advice string) {
	b := strconv.AppendInt(append([]byte(nil), `{"statusCode":`...), int64(statusCode), 10)
	b = strconv.AppendInt(append(b, `,"chatEnded":false,"errors":[{"code":`...), int64(code), 10)
	b = jsonenc.AppendString(append(b, `,"advice":`...), advice)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, "}]}\n"...))
}

// ignoreGone drops errGone: an event for a push channel that just closed
// is lost with it.
func ignoreGone(err error) error {
	if errors.Is(err, errGone) {
		return nil
	}
	return err
}

// form is a decoded application/x-www-form-urlencoded body.
type form []string // key, value, key, value ...

// get returns the first value of key ("" when absent).
func (f form) get(key string) string {
	for i := 0; i+1 < len(f); i += 2 {
		if f[i] == key {
			return f[i+1]
		}
	}
	return ""
}

// readForm reads and decodes a form body of at most maxForm bytes.
func readForm(w http.ResponseWriter, r *http.Request) (form, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxForm))
	if err != nil {
		return nil, errors.New("request body unreadable or over 64 KiB")
	}
	f := make(form, 0, 8)
	for rest := string(body); rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		var err1, err2 error
		if k, err1 = url.QueryUnescape(k); err1 == nil {
			v, err2 = url.QueryUnescape(v)
		}
		if err1 != nil || err2 != nil {
			return nil, errors.New("malformed form")
		}
		f = append(f, k, v)
	}
	return f, nil
}
