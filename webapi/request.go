package webapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// bodyReadTimeout bounds the time a client takes to send a request body.
const bodyReadTimeout = 30 * time.Second

// Limits on request fields that webapi checks itself. The message text limit
// is the core's (it answers InvalidArgument), so that one number rules it.
const (
	maxNameLen     = 128  // nickname, firstName, lastName, alias
	maxSubjectLen  = 1024 // subject
	maxEmailLen    = 320  // emailAddress (RFC 5321 path limit)
	maxIDLen       = 256  // chatId, userId, secureKey, clientMessageId, noticeType
	maxURLLen      = 2048 // pushUrl
	maxUserData    = 64   // userData entries
	maxUserDataKey = 128
	maxUserDataVal = 4096
)

var (
	// errMalformed reports a body that cannot be decoded at all.
	errMalformed = errors.New("malformed request")
	// errTooLarge reports a body over max-body.
	errTooLarge = errors.New("request body too large")
	// errInvalid reports a field that is missing or has a bad value.
	errInvalid = errors.New("invalid parameter")
)

// chatRequest is the decoded body of any customer API call: the union of the
// parameters of every route. Each handler validates the ones it needs.
type chatRequest struct {
	Nickname     string
	FirstName    string
	LastName     string
	Subject      string
	EmailAddress string
	UserData     map[string]string

	UserID          string
	SecureKey       string
	Alias           string
	Message         string
	ClientMessageID string
	NoticeType      string
	PushURL         string

	// TranscriptPosition is set when HasPosition is true.
	TranscriptPosition uint64
	HasPosition        bool
	// PositionIgnored is true when transcriptPosition held a placeholder a
	// JavaScript client sends for "no number" (NaN, undefined, null): it is
	// treated as not given (counted, not refused).
	PositionIgnored bool
	// MislabelledJSON is true when a JSON object came labelled as a form
	// (or text/plain) and was read as JSON (counted, not refused).
	MislabelledJSON bool
}

// field maps an API parameter name to the request field that holds it
// (userData[...] and transcriptPosition are handled apart); nil if unknown.
func (c *chatRequest) field(name string) *string {
	switch name {
	case "nickname":
		return &c.Nickname
	case "firstName":
		return &c.FirstName
	case "lastName":
		return &c.LastName
	case "subject":
		return &c.Subject
	case "emailAddress":
		return &c.EmailAddress
	case "userId":
		return &c.UserID
	case "secureKey":
		return &c.SecureKey
	case "alias":
		return &c.Alias
	case "message":
		return &c.Message
	case "clientMessageId":
		return &c.ClientMessageID
	case "noticeType":
		return &c.NoticeType
	case "pushUrl":
		return &c.PushURL
	}
	return nil
}

// cleanText checks a parameter's text: valid UTF-8 and no control
// character but tab and newline (a CR LF pair, as browsers send a textarea's
// line breaks in forms, becomes a newline; a lone CR is refused). name is
// for the error.
func cleanText(name, v string) (string, error) {
	if !utf8.ValidString(v) {
		return "", fmt.Errorf("%w: %q is not valid UTF-8", errInvalid, name)
	}
	if strings.Contains(v, "\r\n") {
		v = strings.ReplaceAll(v, "\r\n", "\n")
	}
	for _, r := range v {
		if r != '\t' && r != '\n' && unicode.IsControl(r) {
			return "", fmt.Errorf("%w: %q contains the control character %U; only tab and newline are allowed", errInvalid, name, r)
		}
	}
	return v, nil
}

// set stores one parameter. Unknown names are ignored, as GMS does.
func (c *chatRequest) set(name, value string) error {
	if !utf8.ValidString(name) || !utf8.ValidString(value) {
		return fmt.Errorf("%w: %q is not valid UTF-8", errInvalid, name)
	}
	key, isUserData := userDataKey(name)
	if !isUserData && name != "transcriptPosition" && c.field(name) == nil {
		return nil // unknown: ignored
	}
	if isUserData {
		if _, err := cleanText("userData key", key); err != nil {
			return err
		}
	}
	value, err := cleanText(name, value)
	if err != nil {
		return err
	}
	if isUserData {
		if key == "" || len(key) > maxUserDataKey {
			return fmt.Errorf("%w: userData key must be 1 to %d bytes", errInvalid, maxUserDataKey)
		}
		if len(value) > maxUserDataVal {
			return fmt.Errorf("%w: userData[%s] is longer than %d bytes", errInvalid, key, maxUserDataVal)
		}
		if c.UserData == nil {
			c.UserData = make(map[string]string)
		}
		if _, dup := c.UserData[key]; !dup && len(c.UserData) >= maxUserData {
			return fmt.Errorf("%w: more than %d userData entries", errInvalid, maxUserData)
		}
		c.UserData[key] = value
		return nil
	}
	if name == "transcriptPosition" {
		n, given, err := parsePosition(value)
		if err != nil {
			return err
		}
		c.TranscriptPosition, c.HasPosition = n, given
		c.PositionIgnored = !given && strings.TrimSpace(value) != ""
		return nil
	}
	if p := c.field(name); p != nil {
		*p = value
	}
	return nil
}

// parsePosition reads a transcriptPosition value. GMS clients written in
// JavaScript send what their arithmetic gave: an empty value, or NaN,
// undefined or null (any case) when they had no position yet; each of
// these means "not given" (given is false: the route's default applies, a
// refresh starts from the beginning). Anything else must be a non-negative
// decimal integer (surrounding spaces allowed); a negative number, a
// fraction, an exponent, a sign or text is refused with errInvalid.
func parsePosition(value string) (n uint64, given bool, err error) {
	v := strings.TrimSpace(value)
	switch strings.ToLower(v) {
	case "", "nan", "undefined", "null":
		return 0, false, nil
	}
	n, perr := strconv.ParseUint(v, 10, 64)
	if perr != nil {
		return 0, false, fmt.Errorf("%w: transcriptPosition must be a non-negative integer", errInvalid)
	}
	return n, true, nil
}

// userDataKey recognises the form name userData[key].
func userDataKey(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "userData[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return "", false
	}
	return rest[:len(rest)-1], true
}

// parseRequest reads the body of r (JSON when the content type says so,
// otherwise form-encoded, multipart included) and the query string into a
// chatRequest. The body is capped at maxBody bytes.
func parseRequest(w http.ResponseWriter, r *http.Request, maxBody int64) (chatRequest, error) {
	var req chatRequest
	// A slow client gets bodyReadTimeout to send its body; the deadline is
	// lifted afterwards so that it cannot cut a long answer short.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyReadTimeout))
	// The body is read into a buffer kept for the next request: decoding
	// copies what it keeps.
	buf := bodies.Get().(*[]byte)
	defer putBody(buf)
	body, err := readAll(http.MaxBytesReader(w, r.Body, maxBody), (*buf)[:0])
	*buf = body
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return req, fmt.Errorf("%w: limit is %d bytes", errTooLarge, maxBody)
		}
		return req, fmt.Errorf("%w: read body: %v", errMalformed, err)
	}
	// Query parameters first, so that the body wins where both are given.
	if r.URL.RawQuery != "" {
		if err := decodeValues(&req, r.URL.Query()); err != nil {
			return req, err
		}
	}
	mt, params := mediaType(r.Header.Get("Content-Type"))
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		return req, nil
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		return req, decodeJSON(&req, body)
	case mt == "multipart/form-data":
		return req, decodeMultipart(&req, body, params["boundary"])
	case mt == "" || mt == "application/x-www-form-urlencoded" || mt == "text/plain":
		if bytes.TrimSpace(body)[0] == '{' {
			// A JSON body sent without a content type, or labelled as a
			// form (axios before 1.0 sends a plain object as JSON whatever
			// Content-Type the app set). A real form body cannot start with
			// '{': form encoding escapes it as %7B.
			req.MislabelledJSON = mt != ""
			return req, decodeJSON(&req, body)
		}
		return req, decodeForm(&req, body)
	default:
		return req, fmt.Errorf("%w: unsupported content type %q", errMalformed, mt)
	}
}

// mediaType parses a Content-Type header: the media type, lower case, and
// its parameters. The two types every GMS client sends, as they send them,
// are recognised without parsing (mime.ParseMediaType allocates a map).
func mediaType(ct string) (string, map[string]string) {
	switch ct {
	case "application/x-www-form-urlencoded", "application/json":
		return ct, nil
	}
	mt, params, _ := mime.ParseMediaType(ct)
	return mt, params
}

// bodies are the buffers request bodies are read into.
var bodies = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// putBody returns a body buffer to the pool, unless a large body grew it.
func putBody(b *[]byte) {
	if cap(*b) <= 16<<10 {
		*b = (*b)[:0]
		bodies.Put(b)
	}
}

// readAll is io.ReadAll into b.
func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				return b, nil
			}
			return b, err
		}
	}
}

// simpleForms is false when GODEBUG may lower url.ParseQuery's limit on
// parameters (urlmaxqueryparams): every form then goes through it.
var simpleForms = !strings.Contains(os.Getenv("GODEBUG"), "urlmaxqueryparams")

// maxSimpleForm is the most parameters decodeSimpleForm takes.
const maxSimpleForm = 16

// formPair is one decoded parameter of a form.
type formPair struct{ name, value string }

// decodeSimpleForm decodes the form every GMS client sends, a few
// parameters joined by & with valid escapes, as url.ParseQuery and
// decodeValues would, without their map: each name's first value is set,
// in the body's order. ok is false, with nothing set, for any other body
// (a semicolon, a bad escape, more than maxSimpleForm parameters): the
// caller decodes that one with url.ParseQuery, which words its errors.
func decodeSimpleForm(req *chatRequest, body string) (ok bool, err error) {
	if !simpleForms || strings.IndexByte(body, ';') >= 0 {
		return false, nil
	}
	var buf [maxSimpleForm]formPair
	pairs := buf[:0]
	for rest := body; rest != ""; {
		var kv string
		kv, rest, _ = strings.Cut(rest, "&")
		if kv == "" {
			continue
		}
		if len(pairs) == maxSimpleForm {
			return false, nil
		}
		k, v, _ := strings.Cut(kv, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			return false, nil
		}
		value, err := url.QueryUnescape(v)
		if err != nil {
			return false, nil
		}
		pairs = append(pairs, formPair{name, value})
	}
next:
	for i, p := range pairs {
		for _, q := range pairs[:i] {
			if q.name == p.name {
				continue next // a repeated name takes its first value
			}
		}
		if err := req.set(p.name, p.value); err != nil {
			return true, err
		}
	}
	return true, nil
}

// decodeForm decodes an application/x-www-form-urlencoded body.
func decodeForm(req *chatRequest, body []byte) error {
	if ok, err := decodeSimpleForm(req, string(body)); ok {
		return err
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return fmt.Errorf("%w: bad form encoding: %v", errMalformed, err)
	}
	return decodeValues(req, vals)
}

// decodeMultipart decodes a multipart/form-data body (files are rejected).
func decodeMultipart(req *chatRequest, body []byte, boundary string) error {
	if boundary == "" {
		return fmt.Errorf("%w: multipart body without boundary", errMalformed)
	}
	r := &http.Request{Method: http.MethodPost, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(body))}
	r.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
	mr, err := r.MultipartReader()
	if err != nil {
		return fmt.Errorf("%w: %v", errMalformed, err)
	}
	form, err := mr.ReadForm(int64(len(body)))
	if err != nil {
		return fmt.Errorf("%w: bad multipart body: %v", errMalformed, err)
	}
	defer form.RemoveAll()
	if len(form.File) > 0 {
		return fmt.Errorf("%w: file uploads are not accepted", errInvalid)
	}
	return decodeValues(req, form.Value)
}

// decodeValues applies form or query values; a repeated name takes its
// first value.
func decodeValues(req *chatRequest, vals url.Values) error {
	for name, vs := range vals {
		if len(vs) == 0 {
			continue
		}
		if err := req.set(name, vs[0]); err != nil {
			return err
		}
	}
	return nil
}

// checkJSONText refuses a JSON body that is not valid UTF-8, or whose
// strings hold a \u escape of a lone UTF-16 surrogate: encoding/json would
// turn either into U+FFFD silently, so the text stored would not be the text
// sent. It checks nothing else: the decoder judges the syntax.
func checkJSONText(body []byte) error {
	if !utf8.Valid(body) {
		return fmt.Errorf("%w: the body is not valid UTF-8", errInvalid)
	}
	inString := false
	for i := 0; i < len(body); i++ {
		switch b := body[i]; {
		case b == '"':
			inString = !inString
		case b == '\\' && inString:
			if i+1 < len(body) && body[i+1] == 'u' {
				hi, ok := hex4(body[i+2:])
				switch {
				case !ok:
				case hi >= 0xD800 && hi <= 0xDBFF:
					lo, ok := uint16(0), false
					if i+7 < len(body) && body[i+6] == '\\' && body[i+7] == 'u' {
						lo, ok = hex4(body[i+8:])
					}
					if !ok || lo < 0xDC00 || lo > 0xDFFF {
						return fmt.Errorf("%w: a string holds an unpaired UTF-16 surrogate (\\u%04X)", errInvalid, hi)
					}
					i += 6 // the low half is consumed with the high one
				case hi >= 0xDC00 && hi <= 0xDFFF:
					return fmt.Errorf("%w: a string holds an unpaired UTF-16 surrogate (\\u%04X)", errInvalid, hi)
				}
			}
			i++ // the escaped character
		}
	}
	return nil
}

// hex4 decodes four hex digits at the start of b.
func hex4(b []byte) (uint16, bool) {
	if len(b) < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return uint16(n), err == nil
}

// decodeJSON decodes a JSON object body. Values may be strings, numbers or
// booleans (rendered as text); userData is an object of such values, and
// "userData[key]" members are accepted too. The body must be valid UTF-8
// without lone surrogate escapes (checkJSONText), and every value pass
// cleanText, as on the form path.
func decodeJSON(req *chatRequest, body []byte) error {
	if err := checkJSONText(body); err != nil {
		return err
	}
	var obj map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("%w: body is not a JSON object: %v", errMalformed, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON object", errMalformed)
	}
	for name, raw := range obj {
		if name == "userData" {
			var ud map[string]json.RawMessage
			if err := json.Unmarshal(raw, &ud); err != nil {
				return fmt.Errorf("%w: userData must be an object", errInvalid)
			}
			for k, v := range ud {
				s, err := jsonScalar(v)
				if err != nil {
					return fmt.Errorf("%w: userData[%s]: %v", errInvalid, k, err)
				}
				if err := req.set("userData["+k+"]", s); err != nil {
					return err
				}
			}
			continue
		}
		if req.field(name) == nil && name != "transcriptPosition" {
			if _, ok := userDataKey(name); !ok {
				continue // unknown member: ignored
			}
		}
		s, err := jsonScalar(raw)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", errInvalid, name, err)
		}
		if err := req.set(name, s); err != nil {
			return err
		}
	}
	return nil
}

// jsonScalar renders a JSON string, number, boolean or null as text.
func jsonScalar(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", errors.New("empty value")
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errors.New("bad string")
		}
		return s, nil
	case 'n':
		return "", nil
	case 't', 'f':
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return "", errors.New("bad boolean")
		}
		return strconv.FormatBool(b), nil
	case '{', '[':
		return "", errors.New("must be a string or a number")
	default:
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return "", errors.New("bad number")
		}
		return n.String(), nil
	}
}

// checkLen reports a field longer than max bytes.
func checkLen(name, v string, max int) error {
	if len(v) > max {
		return fmt.Errorf("%w: %s is longer than %d bytes", errInvalid, name, max)
	}
	return nil
}

// validateStart checks the parameters of a chat request and fills the
// nickname from firstName and lastName when it is missing.
func (c *chatRequest) validateStart() error {
	if strings.TrimSpace(c.Nickname) == "" {
		c.Nickname = strings.TrimSpace(c.FirstName + " " + c.LastName)
	}
	if strings.TrimSpace(c.Nickname) == "" {
		return fmt.Errorf("%w: nickname is required", errInvalid)
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{
		{"nickname", c.Nickname, maxNameLen},
		{"firstName", c.FirstName, maxNameLen},
		{"lastName", c.LastName, maxNameLen},
		{"subject", c.Subject, maxSubjectLen},
		{"emailAddress", c.EmailAddress, maxEmailLen},
	} {
		if err := checkLen(f.name, f.v, f.max); err != nil {
			return err
		}
	}
	return nil
}

// validateAuth checks the identity parameters every chat call carries.
func (c *chatRequest) validateAuth() error {
	if c.UserID == "" {
		return fmt.Errorf("%w: userId is required", errInvalid)
	}
	if c.SecureKey == "" {
		return fmt.Errorf("%w: secureKey is required", errInvalid)
	}
	for _, f := range []struct{ name, v string }{
		{"userId", c.UserID}, {"secureKey", c.SecureKey}, {"clientMessageId", c.ClientMessageID}, {"noticeType", c.NoticeType},
	} {
		if err := checkLen(f.name, f.v, maxIDLen); err != nil {
			return err
		}
	}
	return checkLen("alias", c.Alias, maxNameLen)
}

// validChatID reports whether a chatId path segment is acceptable.
func validChatID(id string) bool {
	return id != "" && len(id) <= maxIDLen && utf8.ValidString(id)
}

// validatePushURL checks that pushUrl is an absolute http or https URL.
func validatePushURL(s string) error {
	if s == "" {
		return fmt.Errorf("%w: pushUrl is required", errInvalid)
	}
	if err := checkLen("pushUrl", s, maxURLLen); err != nil {
		return err
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: pushUrl must be an absolute http or https URL", errInvalid)
	}
	return nil
}

// errorf makes an errInvalid with a reason.
func errorf(reason string) error { return fmt.Errorf("%w: %s", errInvalid, reason) }
