package ucsmock

import (
	"encoding/json"
	"math"
	"testing"
)

// TestChatMetaCodec: encodeChatMeta writes what json.Marshal writes, and
// decodeChatMeta reads back what json.Unmarshal reads, for plain records
// (the fast path) and for every other form (encoding/json).
func TestChatMetaCodec(t *testing.T) {
	for _, m := range []chatMeta{
		{},
		{Service: "chat", Ended: true, Writer: "core-a", Epoch: 7, UpdatedUnix: 1_700_000_000_000},
		{Service: "chat", Writer: "", Epoch: math.MaxUint64, UpdatedUnix: math.MinInt64},
		{Service: "a<b>&c", Writer: `quote"back\slash`, Epoch: 1, UpdatedUnix: -1},
		{Service: "ünïcödé", Writer: "core\u2028b", Epoch: 10, UpdatedUnix: 0},
	} {
		got, err := encodeChatMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(m)
		if string(got) != string(want) {
			t.Errorf("encode %+v:\n got %s\nwant %s", m, got, want)
		}
		var back chatMeta
		if err := decodeChatMeta(got, &back); err != nil || back != m {
			t.Errorf("decode %s: %+v %v, want %+v", got, back, err, m)
		}
	}
	// Other forms of the same record (older writers, hand edits) decode as
	// encoding/json decodes them.
	for _, raw := range []string{
		`{"service":"chat","ended":false,"writer":"w","epoch":3,"updatedUnixMs":5,"extra":1}`,
		`{"epoch":3,"service":"chat"}`,
		`{ "service": "chat", "ended": true }`,
		`{"service":"c\u0068at","ended":false,"writer":"w","epoch":3,"updatedUnixMs":5}`,
		`{"service":"chat","ended":false,"writer":"w","epoch":03,"updatedUnixMs":5}`,
		`{"service":"chat","ended":false,"writer":"w","epoch":1e2,"updatedUnixMs":5}`,
		`{"service":"chat","ended":false,"writer":"w","epoch":3,"updatedUnixMs":5}x`,
		`{"service":"chat","ended":false,"writer":"w","epoch":3,"updatedUnixMs":5`,
	} {
		var fast, slow chatMeta
		ferr := decodeChatMeta([]byte(raw), &fast)
		serr := json.Unmarshal([]byte(raw), &slow)
		if (ferr == nil) != (serr == nil) || (serr == nil && fast != slow) {
			t.Errorf("decode %s: %+v %v; encoding/json: %+v %v", raw, fast, ferr, slow, serr)
		}
	}
}

func BenchmarkChatMetaCodec(b *testing.B) {
	m := chatMeta{Service: "chat", Writer: "core-a", Epoch: 7, UpdatedUnix: 1_700_000_000_000}
	b.ReportAllocs()
	for b.Loop() {
		v, _ := encodeChatMeta(m)
		var back chatMeta
		if err := decodeChatMeta(v, &back); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkChatMetaJSON(b *testing.B) {
	m := chatMeta{Service: "chat", Writer: "core-a", Epoch: 7, UpdatedUnix: 1_700_000_000_000}
	b.ReportAllocs()
	for b.Loop() {
		v, _ := json.Marshal(m)
		var back chatMeta
		if err := json.Unmarshal(v, &back); err != nil {
			b.Fatal(err)
		}
	}
}
