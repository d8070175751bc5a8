package interaction

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of the agent API's request bodies and fields.
const (
	maxBodyBytes      = 64 << 10
	maxIDLen          = 64
	maxChatIDLen      = 128
	maxNicknameLen    = 64
	maxMessageBytes   = 16 << 10 // the core applies its own, smaller limit
	maxClientMsgIDLen = 128
	maxURLLen         = 2048
	maxPasswordLen    = 1024
)

// loginRequest is the body of a password login. There is no role: the role
// comes from the account.
type loginRequest struct {
	AgentID  string `json:"agentId"`
	Password string `json:"password"`
	Nickname string `json:"nickname"`
}

type sendRequest struct {
	Message         string `json:"message"`
	ClientMessageID string `json:"clientMessageId"`
}

type typingRequest struct {
	Typing *bool `json:"typing"`
}

type pushURLRequest struct {
	URL             string `json:"url"`
	ClientMessageID string `json:"clientMessageId"`
}

type transferRequest struct {
	ToAgentID string `json:"toAgentId"`
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// decodeJSON decodes exactly one JSON object into v, refusing unknown fields
// and trailing data.
func decodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("empty body: want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("trailing data after the JSON object")
	}
	return nil
}

// checkID validates an agent id: 1 to 64 of letters, digits and . _ @ -.
func checkID(field, s string) error {
	if s == "" {
		return badRequest("%s is required", field)
	}
	if len(s) > maxIDLen {
		return badRequest("%s longer than %d bytes", field, maxIDLen)
	}
	for _, r := range s {
		if r > unicode.MaxASCII || !(unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("._@-", r)) {
			return badRequest("%s may hold only letters, digits and . _ @ -", field)
		}
	}
	return nil
}

// checkText validates free text: valid UTF-8 without control characters
// (newline and tab allowed when multiline).
func checkText(field, s string, maxBytes int, multiline bool) error {
	if len(s) > maxBytes {
		return badRequest("%s longer than %d bytes", field, maxBytes)
	}
	if !utf8.ValidString(s) {
		return badRequest("%s is not valid UTF-8", field)
	}
	for _, r := range s {
		if multiline && (r == '\n' || r == '\t' || r == '\r') {
			continue
		}
		if unicode.IsControl(r) {
			return badRequest("%s holds a control character", field)
		}
	}
	return nil
}

// checkChatID validates a chat id from a URL path.
func checkChatID(s string) error {
	if s == "" || len(s) > maxChatIDLen {
		return badRequest("chat id must be 1 to %d bytes", maxChatIDLen)
	}
	return checkText("chat id", s, maxChatIDLen, false)
}

func decodeLogin(body []byte) (loginRequest, error) {
	var req loginRequest
	if err := decodeJSON(body, &req); err != nil {
		return req, err
	}
	if err := checkID("agentId", req.AgentID); err != nil {
		return req, err
	}
	if len(req.Password) > maxPasswordLen {
		return req, badRequest("password longer than %d bytes", maxPasswordLen)
	}
	req.Nickname = strings.TrimSpace(req.Nickname)
	if utf8.RuneCountInString(req.Nickname) > maxNicknameLen {
		return req, badRequest("nickname longer than %d characters", maxNicknameLen)
	}
	if err := checkText("nickname", req.Nickname, 4*maxNicknameLen, false); err != nil {
		return req, err
	}
	return req, nil
}

func checkClientMessageID(s string) error {
	if len(s) > maxClientMsgIDLen {
		return badRequest("clientMessageId longer than %d bytes", maxClientMsgIDLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return badRequest("clientMessageId may hold only printable ASCII without spaces")
		}
	}
	return nil
}

func decodeSend(body []byte) (sendRequest, error) {
	var req sendRequest
	if err := decodeJSON(body, &req); err != nil {
		return req, err
	}
	if strings.TrimSpace(req.Message) == "" {
		return req, badRequest("message is required")
	}
	if err := checkText("message", req.Message, maxMessageBytes, true); err != nil {
		return req, err
	}
	return req, checkClientMessageID(req.ClientMessageID)
}

func decodeTyping(body []byte) (bool, error) {
	var req typingRequest
	if err := decodeJSON(body, &req); err != nil {
		return false, err
	}
	if req.Typing == nil {
		return false, badRequest("typing (true or false) is required")
	}
	return *req.Typing, nil
}

func decodePushURL(body []byte) (pushURLRequest, error) {
	var req pushURLRequest
	if err := decodeJSON(body, &req); err != nil {
		return req, err
	}
	if req.URL == "" {
		return req, badRequest("url is required")
	}
	if len(req.URL) > maxURLLen {
		return req, badRequest("url longer than %d bytes", maxURLLen)
	}
	u, err := url.Parse(req.URL)
	if err != nil {
		return req, badRequest("url does not parse: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return req, badRequest("url must be an absolute http or https URL")
	}
	if err := checkText("url", req.URL, maxURLLen, false); err != nil {
		return req, err
	}
	return req, checkClientMessageID(req.ClientMessageID)
}

func decodeTransfer(body []byte) (transferRequest, error) {
	var req transferRequest
	if err := decodeJSON(body, &req); err != nil {
		return req, err
	}
	return req, checkID("toAgentId", req.ToAgentID)
}
