package ucsmock

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestEventRecord round-trips events through the record and reads a
// protojson record (an older file's) as one without an embedded epoch.
func TestEventRecord(t *testing.T) {
	full := &chatpb.Event{
		SessionId: "s-1", Index: math.MaxUint64, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE,
		From:       &chatpb.Participant{Id: "p1", Nickname: "Ann \"the\" <Agent>", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, Visibility: chatpb.Visibility(2)},
		Visibility: chatpb.Visibility(1), Text: "line\nnext\ttab ünï 😀", UtcUnixMs: math.MinInt64,
		ClientMessageId: "m-1", Attrs: map[string]string{"b": "2", "a": "1"},
		Epoch: 7, KeyHash: "abc", ClientRequestId: "r", SecureKey: "k",
	}
	for _, tc := range []struct {
		name  string
		ev    *chatpb.Event
		epoch uint64
	}{
		{"empty", &chatpb.Event{}, 1},
		{"full", full, math.MaxUint64},
		{"message", ev("c", 3, "hello"), 2},
		{"unnamed enum", &chatpb.Event{Kind: chatpb.EventKind(999)}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := encodeEventRecord(tc.ev, tc.epoch)
			if err != nil {
				t.Fatal(err)
			}
			back := &chatpb.Event{}
			epoch, embedded, err := decodeEventRecord(rec, back)
			if err != nil || !embedded || epoch != tc.epoch || !proto.Equal(back, tc.ev) {
				t.Fatalf("record reads back as %v epoch %d embedded %v err %v", back, epoch, embedded, err)
			}
			old, err := protojson.Marshal(tc.ev)
			if err != nil {
				t.Fatal(err)
			}
			back = &chatpb.Event{}
			if _, embedded, err := decodeEventRecord(old, back); err != nil || embedded || !proto.Equal(back, tc.ev) {
				t.Fatalf("protojson record reads back as %v embedded %v err %v", back, embedded, err)
			}
		})
	}
	if _, err := encodeEventRecord(&chatpb.Event{Text: "\xff"}, 1); err == nil {
		t.Error("an event with text that is not UTF-8 was encoded")
	}
	for name, v := range map[string][]byte{"short header": {eventRecordTag, 0, 0}, "bad body": append([]byte{eventRecordTag, 0, 0, 0, 0, 0, 0, 0, 1}, 0xff, 0xff), "bad json": []byte("{nope")} {
		if _, _, err := decodeEventRecord(v, &chatpb.Event{}); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// TestBoltEventLayout checks what a save writes to the file: one record
// per event that carries its epoch, and no event-epochs bucket. A file of
// the older layout (protojson events, their epochs in event-epochs) is
// still read, fenced by those epochs, and rewritten record by record.
func TestBoltEventLayout(t *testing.T) {
	ctx := context.Background()
	const now = 1_700_000_000_000
	save := func(t *testing.T, s *boltStore, epoch uint64, events ...*chatpb.Event) error {
		t.Helper()
		return s.update(ctx, func(tx txn) error {
			_, err := applySave(tx, SaveRequest{ChatID: "c", Service: "chat", Epoch: epoch, Writer: "w"}, events, now)
			return err
		})
	}
	// raw returns the chat's stored values of bucket name, by index.
	raw := func(t *testing.T, s *boltStore, name []byte) map[uint64][]byte {
		t.Helper()
		out := map[uint64][]byte{}
		err := s.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(name).Bucket([]byte("c"))
			if b == nil {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				out[binary.BigEndian.Uint64(k)] = append([]byte(nil), v...)
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	open := func(t *testing.T, path string) *boltStore {
		t.Helper()
		s, err := openBolt(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.close() })
		return s
	}
	texts := func(t *testing.T, s *boltStore) string {
		t.Helper()
		tr, err := s.transcript(ctx, "c")
		if err != nil || tr == nil {
			t.Fatalf("transcript: %v %v", tr, err)
		}
		var out []string
		for _, e := range tr.Events {
			out = append(out, e.GetText())
		}
		return strings.Join(out, ",")
	}

	t.Run("new file", func(t *testing.T) {
		s := open(t, filepath.Join(t.TempDir(), "ucs.db"))
		if err := save(t, s, 4, ev("c", 1, "a"), ev("c", 2, "b")); err != nil {
			t.Fatal(err)
		}
		recs := raw(t, s, bucketTranscripts)
		for i := uint64(1); i <= 2; i++ {
			v := recs[i]
			if len(v) < eventRecordHeader || v[0] != eventRecordTag || binary.BigEndian.Uint64(v[1:]) != 4 {
				t.Fatalf("event %d stored as %q, want a record of epoch 4", i, v)
			}
		}
		if n := len(raw(t, s, bucketEventEpochs)); n != 0 {
			t.Fatalf("%d event epochs stored apart from their events", n)
		}
		if err := save(t, s, 4, ev("c", 2, "changed")); !errors.Is(err, ErrConflict) {
			t.Fatalf("same-epoch overwrite: %v, want ErrConflict", err)
		}
		if got := texts(t, s); got != "a,b" {
			t.Fatalf("transcript %q", got)
		}
	})

	t.Run("older file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ucs.db")
		s := open(t, path)
		if err := save(t, s, 3, ev("c", 1, "seed")); err != nil {
			t.Fatal(err)
		}
		// Rewrite the chat as the older layout stored it.
		err := s.db.Update(func(tx *bolt.Tx) error {
			tb, eb := tx.Bucket(bucketTranscripts).Bucket([]byte("c")), tx.Bucket(bucketEventEpochs)
			ecb, err := eb.CreateBucketIfNotExists([]byte("c"))
			if err != nil {
				return err
			}
			for i, text := range []string{"a", "b"} {
				v, err := protojson.Marshal(ev("c", uint64(i+1), text))
				if err != nil {
					return err
				}
				if err := tb.Put(indexKey(uint64(i+1)), v); err != nil {
					return err
				}
				if err := ecb.Put(indexKey(uint64(i+1)), binary.BigEndian.AppendUint64(nil, 3)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		s.close()
		s = open(t, path) // passes the integrity check
		if got := texts(t, s); got != "a,b" {
			t.Fatalf("older transcript reads %q", got)
		}
		if err := save(t, s, 3, ev("c", 2, "changed")); !errors.Is(err, ErrConflict) {
			t.Fatalf("overwrite in the epoch kept in event-epochs: %v, want ErrConflict", err)
		}
		if err := save(t, s, 5, ev("c", 2, "newer"), ev("c", 3, "c")); err != nil {
			t.Fatal(err)
		}
		if got := texts(t, s); got != "a,newer,c" {
			t.Fatalf("transcript %q", got)
		}
		if eps := raw(t, s, bucketEventEpochs); len(eps) != 1 || eps[1] == nil {
			t.Fatalf("event epochs left %v, want only event 1's", eps)
		}
		if err := save(t, s, 5, ev("c", 2, "again")); !errors.Is(err, ErrConflict) {
			t.Fatalf("overwrite in the record's epoch: %v, want ErrConflict", err)
		}
		s.close()
		if got := texts(t, open(t, path)); got != "a,newer,c" {
			t.Fatalf("after reopen: %q", got)
		}
	})
}

func BenchmarkEventRecord(b *testing.B) {
	e := ev("chat-1", 42, strings.Repeat("x", 64))
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeEventRecord(e, 3); err != nil {
				b.Fatal(err)
			}
		}
	})
	rec, _ := encodeEventRecord(e, 3)
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := decodeEventRecord(rec, &chatpb.Event{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzDecodeEventRecord: any bytes decode or are refused, never panic; a
// record that decodes with its epoch encodes back to one that decodes to
// the same event and epoch.
func FuzzDecodeEventRecord(f *testing.F) {
	for _, e := range []*chatpb.Event{{}, ev("c", 3, "hello"), {Kind: chatpb.EventKind(999), Attrs: map[string]string{"a": "1"}}} {
		rec, err := encodeEventRecord(e, 9)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(rec)
		old, _ := protojson.Marshal(e)
		f.Add(old)
	}
	f.Add([]byte{eventRecordTag})
	f.Fuzz(func(t *testing.T, v []byte) {
		got := &chatpb.Event{}
		epoch, embedded, err := decodeEventRecord(v, got)
		if err != nil || !embedded {
			return
		}
		rec, err := encodeEventRecord(got, epoch)
		if err != nil {
			return // decoded, but not encodable (text that is not UTF-8 in a hand-made record)
		}
		back := &chatpb.Event{}
		epoch2, embedded2, err := decodeEventRecord(rec, back)
		if err != nil || !embedded2 || epoch2 != epoch || !proto.Equal(back, got) {
			t.Fatalf("re-encoded record reads back as %v epoch %d embedded %v err %v, want %v epoch %d", back, epoch2, embedded2, err, got, epoch)
		}
	})
}
