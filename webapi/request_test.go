package webapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// checkDecoded asserts what every successfully decoded request guarantees:
// valid UTF-8 everywhere (so the protobuf request can be marshalled), bounded
// user data, and a request the core would accept on the wire.
func checkDecoded(t *testing.T, req chatRequest) {
	t.Helper()
	for _, s := range []string{req.Nickname, req.FirstName, req.LastName, req.Subject, req.EmailAddress,
		req.UserID, req.SecureKey, req.Alias, req.Message, req.ClientMessageID, req.NoticeType, req.PushURL} {
		if !utf8.ValidString(s) {
			t.Fatalf("decoded invalid UTF-8 %q", s)
		}
		checkNoControl(t, s)
	}
	if len(req.UserData) > maxUserData {
		t.Fatalf("%d userData entries", len(req.UserData))
	}
	for k, v := range req.UserData {
		if k == "" || len(k) > maxUserDataKey || len(v) > maxUserDataVal || !utf8.ValidString(k) || !utf8.ValidString(v) {
			t.Fatalf("bad userData %q=%q", k, v)
		}
		checkNoControl(t, k)
		checkNoControl(t, v)
	}
	if _, err := proto.Marshal(&chatpb.StartSessionRequest{Nickname: req.Nickname, Subject: req.Subject, UserData: req.UserData,
		FirstName: req.FirstName, LastName: req.LastName, EmailAddress: req.EmailAddress}); err != nil {
		t.Fatalf("start request does not marshal: %v", err)
	}
	if _, err := proto.Marshal(&chatpb.SendRequest{Text: req.Message, ClientMessageId: req.ClientMessageID,
		Auth: &chatpb.Auth{ParticipantId: req.UserID, SecureKey: req.SecureKey}}); err != nil {
		t.Fatalf("send request does not marshal: %v", err)
	}
	if !req.HasPosition && req.TranscriptPosition != 0 {
		t.Fatalf("position %d without HasPosition", req.TranscriptPosition)
	}
}

// checkNoControl asserts a decoded value holds no control character but
// tab and newline.
func checkNoControl(t *testing.T, s string) {
	t.Helper()
	for _, r := range s {
		if r != '\t' && r != '\n' && unicode.IsControl(r) {
			t.Fatalf("decoded control character %U in %q", r, s)
		}
	}
}

// checkRefused asserts a refused request is a client error with advice.
func checkRefused(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, errMalformed) && !errors.Is(err, errInvalid) && !errors.Is(err, errTooLarge) {
		t.Fatalf("error %v is none of the sentinels", err)
	}
	if f := classify(err); f.HTTP != http.StatusBadRequest || f.Status != statusUnrecovered || f.Advice == "" {
		t.Fatalf("refusal classified as %+v", f)
	}
}

func parseBody(contentType string, body []byte) (chatRequest, error) {
	r := httptest.NewRequest(http.MethodPost, "/genesys/2/chat/s", bytes.NewReader(body))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	return parseRequest(httptest.NewRecorder(), r, 4096)
}

func FuzzParseJSON(f *testing.F) {
	for _, seed := range []string{
		`{"nickname":"Ada","subject":"x","userData":{"a":"1","b":2,"c":true,"d":null}}`,
		`{"userId":"u","secureKey":"k","message":"hi","clientMessageId":"m1","transcriptPosition":3}`,
		`{"transcriptPosition":"7","userData[k]":"v"}`,
		`{"transcriptPosition":-1}`, `{"transcriptPosition":1e3}`, `{"nickname":["x"]}`,
		`{"nickname":"\ud800"}`, `{"userData":{"":"x"}}`, `[]`, `null`, `{`, `{"a":1}{}`, ``, `"str"`,
		`{"message":"\u0000\u001f"}`, `{"pushUrl":"https://example.com/?q=1"}`,
		"{\"message\":\"\xff\"}", `{"message":"\ud83d\ude00"}`, `{"message":"\udc00\ud800"}`, `{"message":"a\r\nb\tc"}`,
		`{"a\\":"\\u0007","message":"\\"}`, "{\"nickname\":\"\u0085\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseBody("application/json", body)
		if err != nil {
			checkRefused(t, err)
			return
		}
		checkDecoded(t, req)
		// A body that is not valid UTF-8 is never accepted (encoding/json
		// alone would have replaced the bad bytes with U+FFFD).
		if len(bytes.TrimSpace(body)) > 0 && !utf8.Valid(body) {
			t.Fatalf("accepted a body with invalid UTF-8: %q", body)
		}
	})
}

func FuzzParseForm(f *testing.F) {
	for _, seed := range []string{
		"nickname=Ada&subject=x&userData%5Ba%5D=1",
		"userId=u&secureKey=k&message=hi&clientMessageId=m&transcriptPosition=2",
		"transcriptPosition=x", "transcriptPosition=%2B1", "nickname=%ff", "a=%zz", "userData%5B%5D=1",
		"userData[a]=1&userData[a]=2", "message=a;b", "&&&=", "",
		`{"nickname":"Ada","userData[a]":"1"}`, ` {"transcriptPosition":null}`, "{nickname=Ada",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := parseBody("application/x-www-form-urlencoded", []byte(body))
		if err != nil {
			checkRefused(t, err)
			return
		}
		checkDecoded(t, req)
	})
}

func TestParseLimits(t *testing.T) {
	big := bytes.Repeat([]byte("a"), 5000)
	cases := []struct {
		name        string
		contentType string
		body        []byte
		want        error
	}{
		{"too large", "application/json", append(append([]byte(`{"message":"`), big...), '"', '}'), errTooLarge},
		{"too many userData", "application/x-www-form-urlencoded", manyUserData(maxUserData + 1), errInvalid},
		{"userData at the limit", "application/x-www-form-urlencoded", manyUserData(maxUserData), nil},
		{"empty body", "application/json", nil, nil},
		{"multipart without boundary", "multipart/form-data", []byte("x"), errMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseBody(tc.contentType, tc.body)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func manyUserData(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString("userData%5Bk")
		b.WriteString(itoa(uint64(i)))
		b.WriteString("%5D=v")
	}
	return b.Bytes()
}

// FuzzRoutes sends arbitrary bodies to every POST route of a live handler in
// front of the fake core (with a valid userId and secureKey in the query, so
// that bodies reach the core): the answer is always JSON with a statusCode,
// never a 500, and a 400 always says why.
func FuzzRoutes(f *testing.F) {
	tel := telemetry.Discard()
	core := newFakeCore()
	cfg := DefaultConfig()
	cfg.MaxBody = 8 << 10
	srv, err := New(cfg, startFakeCore(f, core, tel), tel)
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/genesys/2/chat/s", strings.NewReader("nickname=seed")))
	var start response
	if err := json.Unmarshal(rec.Body.Bytes(), &start); err != nil || start.ChatID == "" {
		f.Fatalf("start: %v %s", err, rec.Body.String())
	}
	routes := []string{"", "/send", "/refresh", "/startTyping", "/stopTyping", "/customNotice", "/pushUrl", "/disconnect"}
	types := []string{"application/json", "application/x-www-form-urlencoded", "", "multipart/form-data; boundary=xx", "text/xml"}
	for i := range routes {
		f.Add(uint8(i), uint8(0), []byte(`{"message":"hi","transcriptPosition":1,"pushUrl":"http://a.example/"}`))
		f.Add(uint8(i), uint8(1), []byte("message=hi&clientMessageId=x&noticeType=t"))
	}
	f.Add(uint8(0), uint8(3), []byte("--xx\r\nContent-Disposition: form-data; name=\"nickname\"\r\n\r\nAda\r\n--xx--\r\n"))
	f.Add(uint8(1), uint8(2), []byte(`{"secureKey":"wrong","message":"x"}`))
	f.Add(uint8(1), uint8(4), []byte(`<x/>`))
	f.Fuzz(func(t *testing.T, route, ctype uint8, body []byte) {
		r := routes[int(route)%len(routes)]
		path := "/genesys/2/chat/s"
		if r != "" {
			path += "/" + start.ChatID + r + "?userId=" + url.QueryEscape(start.UserID) + "&secureKey=" + url.QueryEscape(start.SecureKey)
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		if ct := types[int(ctype)%len(types)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var resp response
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatalf("%s: answer %d is not JSON: %q", path, rec.Code, rec.Body.String())
		}
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s: HTTP %d %+v", path, rec.Code, resp)
		}
		if resp.StatusCode < 0 || resp.StatusCode > 2 {
			t.Fatalf("statusCode %d", resp.StatusCode)
		}
		if rec.Code == http.StatusBadRequest && (resp.StatusCode != 2 || len(resp.Errors) == 0 || resp.Errors[0].Advice == "") {
			t.Fatalf("400 without advice: %+v", resp)
		}
	})
}

// FuzzCheckJSONText: a body that checkJSONText lets through decodes without
// any replacement character that the body did not hold itself (as raw
// U+FFFD or as a \ufffd escape): nothing sent is silently altered.
func FuzzCheckJSONText(f *testing.F) {
	for _, s := range []string{`{"a":"\ud83d\ude00"}`, `{"a":"\ud800"}`, `{"a":"\\ud800"}`, "{\"a\":\"\xff\"}", `{"a":"\ufffd"}`,
		`["\udbff\udfff","\ud800\u0041"]`, `"\"\ud800"`, "\"\uFFFD\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if checkJSONText(body) != nil {
			return
		}
		var v any
		if json.Unmarshal(body, &v) != nil {
			return
		}
		allowed := bytes.Count(body, []byte("\uFFFD")) + bytes.Count(bytes.ToLower(body), []byte(`\ufffd`))
		got := 0
		var walk func(any)
		walk = func(x any) {
			switch x := x.(type) {
			case string:
				got += strings.Count(x, "\uFFFD")
			case []any:
				for _, e := range x {
					walk(e)
				}
			case map[string]any:
				for k, e := range x {
					got += strings.Count(k, "\uFFFD")
					walk(e)
				}
			}
		}
		walk(v)
		if got > allowed {
			t.Fatalf("%q decoded with %d replacement characters, the body held %d", body, got, allowed)
		}
	})
}

func TestParsePosition(t *testing.T) {
	for _, tc := range []struct {
		in    string
		n     uint64
		given bool
		bad   bool
	}{
		{"", 0, false, false}, {"  ", 0, false, false}, {"NaN", 0, false, false}, {"nan", 0, false, false},
		{"undefined", 0, false, false}, {"null", 0, false, false}, {"NULL", 0, false, false},
		{"0", 0, true, false}, {"1", 1, true, false}, {" 7 ", 7, true, false}, {"18446744073709551615", 1<<64 - 1, true, false},
		{"-1", 0, false, true}, {"+1", 0, false, true}, {"1.5", 0, false, true}, {"1e3", 0, false, true},
		{"abc", 0, false, true}, {"Infinity", 0, false, true}, {"18446744073709551616", 0, false, true}, {"0x10", 0, false, true},
	} {
		n, given, err := parsePosition(tc.in)
		if (err != nil) != tc.bad || n != tc.n || given != tc.given {
			t.Errorf("parsePosition(%q) = %d, %v, %v; want %d, %v, bad=%v", tc.in, n, given, err, tc.n, tc.given, tc.bad)
		}
		if err != nil && !errors.Is(err, errInvalid) {
			t.Errorf("parsePosition(%q): %v is not errInvalid", tc.in, err)
		}
	}
}

// FuzzParsePosition: never a panic; a value is either a placeholder (not
// given), a decimal that round-trips, or errInvalid.
func FuzzParsePosition(f *testing.F) {
	for _, s := range []string{"", "NaN", "undefined", "null", "0", "12", " 3 ", "-1", "+1", "1.5", "1e3", "\x00", "NaN1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, given, err := parsePosition(s)
		switch {
		case err != nil:
			if !errors.Is(err, errInvalid) || given || n != 0 {
				t.Fatalf("parsePosition(%q) = %d, %v, %v", s, n, given, err)
			}
		case given:
			if strconv.FormatUint(n, 10) != strings.TrimLeft(strings.TrimSpace(s), "0") && !(n == 0 && strings.Trim(strings.TrimSpace(s), "0") == "") {
				t.Fatalf("parsePosition(%q) = %d does not round-trip", s, n)
			}
		default:
			if n != 0 {
				t.Fatalf("parsePosition(%q): not given but %d", s, n)
			}
		}
	})
}
