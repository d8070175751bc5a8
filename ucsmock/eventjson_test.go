package ucsmock

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestEventJSONSchema fails when chatpb.Event or chatpb.Participant
// changes: teach appendEventJSON the new fields (eventFields,
// participantFields), or the store falls back to protojson for every event.
func TestEventJSONSchema(t *testing.T) {
	if !fastEventJSON {
		t.Fatal("chatpb.Event's schema is not the one appendEventJSON knows: every stored event goes through protojson")
	}
}

// TestEventJSON: what encodeEventJSON writes, protojson reads back to an
// equal event, for every field set and unset, and for strings JSON must
// escape; an event protojson refuses, encodeEventJSON refuses too.
func TestEventJSON(t *testing.T) {
	full := &chatpb.Event{
		SessionId: "s-1", Index: math.MaxUint64, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE,
		From:       &chatpb.Participant{Id: "p1", Nickname: "Ann \"the\" <Agent>", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, Visibility: chatpb.Visibility(2)},
		Visibility: chatpb.Visibility(1), Text: "line\nnext\ttab\r\\ \x00\x1f \u2028 ünï 😀", UtcUnixMs: math.MinInt64,
		ClientMessageId: "m-1", Attrs: map[string]string{"b": "2", "a": "1", "": "empty key", "q\"k": "v\\"},
		Epoch: 7, KeyHash: "abc", ClientRequestId: "r", SecureKey: "k",
	}
	cases := map[string]*chatpb.Event{
		"empty":       {},
		"full":        full,
		"empty from":  {SessionId: "s", Index: 1, From: &chatpb.Participant{}},
		"message":     ev("c", 3, "hello"),
		"negative":    {UtcUnixMs: -1},
		"empty attrs": {Attrs: map[string]string{}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		e := proto.Clone(full).(*chatpb.Event)
		e.Text = randomString(rng)
		e.Attrs = map[string]string{randomString(rng): randomString(rng)}
		e.From.Nickname = randomString(rng)
		e.Index, e.UtcUnixMs = rng.Uint64(), rng.Int64()-math.MaxInt64/2
		cases["random "+string(rune('a'+i%26))+strings.Repeat("'", i/26)] = e
	}
	for name, e := range cases {
		b, err := encodeEventJSON(e)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		back := &chatpb.Event{}
		if err := protojson.Unmarshal(b, back); err != nil {
			t.Fatalf("%s: protojson cannot read %s: %v", name, b, err)
		}
		if !proto.Equal(back, e) {
			t.Fatalf("%s: %s reads back as %v, want %v", name, b, back, e)
		}
	}
	for name, e := range map[string]*chatpb.Event{
		"bad utf-8 text":     {Text: "\xff"},
		"bad utf-8 attr key": {Attrs: map[string]string{"\xfe": "v"}},
		"bad utf-8 nickname": {From: &chatpb.Participant{Nickname: "a\xc3"}},
	} {
		_, perr := protojson.Marshal(e)
		_, err := encodeEventJSON(e)
		if (err == nil) != (perr == nil) {
			t.Errorf("%s: encodeEventJSON %v, protojson %v", name, err, perr)
		}
		if _, ok := appendEventJSON(nil, e); ok {
			t.Errorf("%s: the fast path wrote it", name)
		}
	}
	// An enum value without a name: protojson writes its number.
	odd := &chatpb.Event{Kind: chatpb.EventKind(999)}
	if _, ok := appendEventJSON(nil, odd); ok {
		t.Error("the fast path wrote an enum value without a name")
	}
	b, err := encodeEventJSON(odd)
	back := &chatpb.Event{}
	if err != nil || protojson.Unmarshal(b, back) != nil || !proto.Equal(back, odd) {
		t.Errorf("unnamed enum: %s %v", b, err)
	}
}

// randomString is up to 12 runes of ASCII, control characters, quotes,
// backslashes and multi-byte characters.
func randomString(rng *rand.Rand) string {
	const pool = "aZ9 \"\\\n\t\x00\x01\x7fé€😀\u2028<>&"
	runes := []rune(pool)
	var sb strings.Builder
	for range rng.IntN(13) {
		sb.WriteRune(runes[rng.IntN(len(runes))])
	}
	return sb.String()
}

func BenchmarkEventJSON(b *testing.B) {
	e := ev("chat-1", 42, strings.Repeat("x", 64))
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeEventJSON(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := protojson.Marshal(e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
