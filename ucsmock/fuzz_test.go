package ucsmock

import (
	"bytes"
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// dbDigest hashes every key and value of the database, nested buckets
// included.
func dbDigest(t testing.TB, s *Server) [32]byte {
	t.Helper()
	h := sha256.New()
	var walk func(b *bolt.Bucket)
	walk = func(b *bolt.Bucket) {
		b.ForEach(func(k, v []byte) error {
			h.Write(k)
			if v == nil {
				h.Write([]byte{'{'})
				walk(b.Bucket(k))
				h.Write([]byte{'}'})
			} else {
				h.Write([]byte{0})
				h.Write(v)
			}
			h.Write([]byte{1})
			return nil
		})
	}
	err := s.store.(*boltStore).db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			h.Write(name)
			walk(b)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// FuzzSave posts arbitrary bytes as a save body: the server never panics,
// always answers JSON with a known status, and changes nothing unless it
// answers 200.
func FuzzSave(f *testing.F) {
	f.Add([]byte(saveJSON(f, "chat", 1, false, evs("f", 1, 2)...)))
	f.Add([]byte(saveJSON(f, "chat", 1, true, ev("f", 1, "other"))))
	f.Add([]byte(saveJSON(f, "chat", 0, false, ev("f", 3, "x"))))
	f.Add([]byte(saveJSON(f, "chat", 2, false, ev("g", 1, "x"))))
	f.Add([]byte(saveJSON(f, "chat", 2, false, ev("f", 0, "x"))))
	f.Add([]byte(`{"service":"chat","epoch":1,"events":[{"sessionId":"f","index":"7","attrs":{"a":"b"}}]}`))
	f.Add([]byte(`{"service":"chat","epoch":18446744073709551615,"events":[]}`))
	f.Add([]byte(`{"service":"chat","epoch":1.5}`))
	f.Add([]byte(`{"service":"chat"}{"service":"chat"}`))
	f.Add([]byte(`{"service":"\u0000"}`))
	f.Add([]byte(`{"events":[null,{}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Add([]byte("\xff\xfe"))

	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(f.TempDir(), "ucs.db")
	cfg.MaxBody = 4 << 10
	srv, err := New(cfg, discardTel())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	h := srv.Handler()
	known := map[int]bool{200: true, 400: true, 409: true, 413: true}

	f.Fuzz(func(t *testing.T, body []byte) {
		before := dbDigest(t, srv)
		req := httptest.NewRequest(http.MethodPost, "/ucs/v1/transcripts/f", bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if !known[rec.Code] {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if !bytes.HasPrefix(rec.Body.Bytes(), []byte("{")) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
		if rec.Code != 200 && dbDigest(t, srv) != before {
			t.Fatalf("status %d changed the database; body %q", rec.Code, body)
		}
	})
}
