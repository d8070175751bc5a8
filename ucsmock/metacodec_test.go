package ucsmock

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
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

// TestBatchAnswerCodec: encodeBatchAnswer writes what
// json.NewEncoder(w).Encode writes, for plain results (the fast path) and
// for results with an error or a chat id encoding/json escapes.
func TestBatchAnswerCodec(t *testing.T) {
	ok := batchResult{ChatID: "chat-1", Status: 200, Saved: 1, HighestIndex: 7}
	for _, a := range []batchAnswer{
		{},
		{Results: []batchResult{}},
		{Results: []batchResult{ok}},
		{Results: []batchResult{ok, {ChatID: "c", Status: 200, Unchanged: 3, HighestIndex: math.MaxUint64}, {}}},
		{Results: []batchResult{{ChatID: "a<b>&\"c\\", Status: 200, Saved: 2}, {ChatID: "ünï\u2028", Status: 200}, {ChatID: "bad\xffutf8\n", Status: 200}}},
		{Results: []batchResult{ok, {ChatID: "x", Status: 409, Error: &errorBody{Error: "conflict <x>", Code: "conflict", Epoch: 3, Holder: "core-b"}}, ok}},
		{Results: []batchResult{{ChatID: "d", Status: 410, Error: &errorBody{Error: "deleted", Code: "deleted", Tombstone: &Tombstone{ChatID: "d"}}}}},
	} {
		got, err := encodeBatchAnswer(a)
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(a); err != nil {
			t.Fatal(err)
		}
		if string(got) != want.String() {
			t.Errorf("encode %+v:\n got %s\nwant %s", a, got, want.String())
		}
	}
}

func BenchmarkBatchAnswer(b *testing.B) {
	results := make([]batchResult, 256)
	for i := range results {
		results[i] = batchResult{ChatID: "chat-" + strconv.Itoa(i), Status: 200, Saved: 1, HighestIndex: uint64(i)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodeBatchAnswer(batchAnswer{Results: results}); err != nil {
			b.Fatal(err)
		}
	}
}
