package interaction

import (
	"encoding/json"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/jsonenc"
)

// trickyText holds what encoding/json escapes: quotes, controls, HTML
// characters, U+2028 and invalid UTF-8.
const trickyText = "a \"quoted\" <b>&</b>\n\t\x01 \u2028 \xff é"

// TestChatEventJSON checks that a "chat" event's data is, byte for byte,
// what newMsg (json.Marshal) wrote: the hand-written encoder is not a new
// contract.
func TestChatEventJSON(t *testing.T) {
	for _, s := range []string{"", "plain", trickyText} {
		for _, ev := range []*chatpb.Event{
			{},
			{SessionId: "c-1", Index: 3, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: s, UtcUnixMs: 1733500000123,
				Visibility: chatpb.Visibility_VISIBILITY_ALL, ClientMessageId: s,
				From: &chatpb.Participant{Id: s, Nickname: s, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}},
			{SessionId: s, Index: 1<<64 - 1, Kind: chatpb.EventKind(99), UtcUnixMs: -5, Visibility: chatpb.Visibility(7),
				From:  &chatpb.Participant{Type: chatpb.ParticipantType(42)},
				Attrs: map[string]string{"reason": s, "noticeType": "x", s + "k": s, "<": "&", "": ""}},
			{Kind: chatpb.EventKind_EVENT_KIND_NOTICE, Attrs: map[string]string{}},
		} {
			ej := toEventJSON(ev)
			want := newMsg(evChat, ej).data
			if got := ej.appendJSON(nil); string(got) != string(want) {
				t.Errorf("event %v with %q:\n got %s\nwant %s", ev, s, got, want)
			}
		}
	}
}

// FuzzChatEventJSON checks any strings in every member against
// json.Marshal.
func FuzzChatEventJSON(f *testing.F) {
	f.Add("c", "hi", "k", "v", uint64(1), int64(2))
	f.Fuzz(func(t *testing.T, id, text, k, v string, index uint64, utc int64) {
		ej := chatEventJSON{ChatID: id, Index: index, Kind: text, Text: text, Visibility: v, UTCTime: utc, ClientMessageID: k,
			From: &participantJSON{ID: id, Nickname: text, Type: k}, Attrs: map[string]string{k: v, v: k, text: id}}
		want, _ := json.Marshal(ej)
		if got := ej.appendJSON(nil); string(got) != string(want) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
	})
}

// TestChatEventJSONFields pins the members appendJSON writes: a field added
// to (or renamed in) chatEventJSON or participantJSON must be written there
// too, and this list updated with it.
func TestChatEventJSONFields(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{chatEventJSON{}, "chatId index kind text,omitempty from,omitempty visibility utcTime clientMessageId,omitempty attrs,omitempty"},
		{participantJSON{}, "participantId nickname type"},
	} {
		if got := jsonenc.FieldTags(tc.v); got != tc.want {
			t.Errorf("%T members %q, the encoder writes %q: update appendJSON", tc.v, got, tc.want)
		}
	}
}
