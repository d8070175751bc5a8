package webapi

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/jsonenc"
)

// tricky holds strings that encoding/json escapes: quotes, controls,
// HTML characters, U+2028 and invalid UTF-8.
const tricky = "a \"quoted\" <b>&</b>\n\t\x01 \u2028 \xff é"

func sampleMessage(s string) *message {
	return &message{Index: 12, Type: "Message", Text: s, UTCTime: 1733500000123,
		From:            from{Nickname: s, ParticipantID: "p-" + s, Type: "Client"},
		ClientMessageID: s, NoticeType: s, Reason: s}
}

// sampleResponses are answers of every shape: each omitempty member empty
// and set, messages absent (nil), empty and with a nil entry, errors.
func sampleResponses(s string) []*response {
	return []*response{
		{},
		{StatusCode: statusOK, ChatID: "c-1", UserID: "u-1", SecureKey: "k-1", Alias: "core-a", NextPosition: 7, Index: 7},
		{StatusCode: statusOK, ChatID: s, UserID: s, SecureKey: s, Alias: s, Messages: []*message{}, ChatEnded: true, Duplicate: true, Index: 1<<64 - 1},
		{StatusCode: statusOK, Messages: []*message{sampleMessage(s), {}, nil, sampleMessage("")}, NextPosition: 3},
		{StatusCode: statusRetry, Errors: []apiError{{Code: codeUnavailable, Advice: s}, {}}},
		{StatusCode: -1, Errors: []apiError{}},
	}
}

// TestResponseJSON checks that writeJSON writes, byte for byte, what
// json.NewEncoder(w).Encode wrote: the hand-written encoder is not a new
// contract.
func TestResponseJSON(t *testing.T) {
	for _, s := range []string{"", "plain", tricky} {
		for i, resp := range sampleResponses(s) {
			var want bytes.Buffer
			if err := json.NewEncoder(&want).Encode(resp); err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			writeJSON(rec, 200, resp)
			if got := rec.Body.String(); got != want.String() {
				t.Errorf("response %d with %q:\n got %s\nwant %s", i, s, got, want.String())
			}
		}
	}
}

// TestMessageJSON checks the push channel's event data against
// json.Marshal, for every kind of event a customer sees.
func TestMessageJSON(t *testing.T) {
	for _, s := range []string{"", tricky} {
		for kind := range eventTypes {
			ev := &chatpb.Event{Index: 5, Kind: kind, Text: s, UtcUnixMs: -1, ClientMessageId: s,
				From:  &chatpb.Participant{Id: s, Nickname: s, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT},
				Attrs: map[string]string{"noticeType": s, "reason": s}}
			m, ok := toMessage(ev)
			if !ok {
				t.Fatalf("%v not shown", kind)
			}
			want, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.appendJSON(nil); string(got) != string(want) {
				t.Errorf("%v with %q:\n got %s\nwant %s", kind, s, got, want)
			}
		}
	}
}

// FuzzResponseJSON checks any strings in every member against
// encoding/json.
func FuzzResponseJSON(f *testing.F) {
	f.Add("", "x", tricky)
	f.Fuzz(func(t *testing.T, a, b, c string) {
		resps := append(sampleResponses(a), sampleResponses(b)...)
		resps = append(resps, &response{ChatID: a, UserID: b, SecureKey: c, Messages: []*message{sampleMessage(c)},
			Errors: []apiError{{Advice: a + b}}})
		for _, resp := range resps {
			want, _ := json.Marshal(resp)
			if got := resp.appendJSON(nil); string(got) != string(want) {
				t.Fatalf("got %s\nwant %s", got, want)
			}
		}
	})
}

// TestJSONFieldsKnown pins the members the hand-written encoders write:
// a field added to (or renamed in) response, message, from or apiError
// must be written by appendJSON too, and this list updated with it.
func TestJSONFieldsKnown(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{response{}, "statusCode chatId,omitempty userId,omitempty secureKey,omitempty alias,omitempty messages,omitzero nextPosition,omitempty chatEnded index,omitempty duplicate,omitempty errors,omitempty"},
		{message{}, "index type text,omitempty utcTime from clientMessageId,omitempty noticeType,omitempty reason,omitempty"},
		{from{}, "nickname participantId type"},
		{apiError{}, "code advice"},
	} {
		if got := jsonenc.FieldTags(tc.v); got != tc.want {
			t.Errorf("%T members %q, the encoder writes %q: update appendJSON", tc.v, got, tc.want)
		}
	}
}
