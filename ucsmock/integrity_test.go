package ucsmock

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// writeTestDB creates a database at path holding chats chats of events
// events each, and closes it.
func writeTestDB(t *testing.T, path string, chats, events int) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DBPath = path
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	for i := range chats {
		chat := "chat-" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		var list []*chatpb.Event
		for n := 1; n <= events; n++ {
			list = append(list, ev(chat, uint64(n), fmt.Sprintf("%s event %d", chat, n)))
		}
		req := SaveRequest{ChatID: chat, Service: "svc", Epoch: 1, Writer: "core-a", Events: list}
		err := srv.store.update(context.Background(), func(tx txn) error {
			_, err := applySave(tx, req, list, 1)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
}

// openTestDB opens the database at path as ucs does and closes it again.
func openTestDB(path string) error {
	cfg := DefaultConfig()
	cfg.DBPath = path
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		return err
	}
	return srv.Close()
}

// dbPages describes the pages of the database file at path: the page size,
// the high water mark (pages in use end there) and the ids of the leaf and
// branch pages in use.
type dbPages struct {
	size, hwm      int
	leaf, branches []int
}

func readPages(t *testing.T, path string) dbPages {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := dbPages{size: db.Info().PageSize}
	err = db.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			p, err := tx.Page(id)
			if err != nil {
				return err
			}
			if p == nil {
				out.hwm = id
				return nil
			}
			switch p.Type {
			case "leaf":
				out.leaf = append(out.leaf, id)
			case "branch":
				out.branches = append(out.branches, id)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.leaf) == 0 || len(out.branches) == 0 {
		t.Fatalf("want leaf and branch pages in %s, got %+v", path, out)
	}
	return out
}

func TestOpenCorruptDatabase(t *testing.T) {
	dir := t.TempDir()
	healthy := filepath.Join(dir, "healthy.db")
	writeTestDB(t, healthy, 60, 20)
	good, err := os.ReadFile(healthy)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	randomBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	overwrite := func(at int64, p []byte) []byte {
		b := bytes.Clone(good)
		copy(b[at:], p)
		return b
	}
	pages := readPages(t, healthy)
	pageSize := pages.size
	leafOff := int64(pages.leaf[len(pages.leaf)/2]) * int64(pageSize)
	branchOff := int64(pages.branches[len(pages.branches)/2]) * int64(pageSize)
	// A value's bytes: the text of an event, somewhere in the file.
	valueAt := int64(bytes.Index(good, []byte("chat-m event 7")))
	if valueAt < 0 {
		t.Fatal("event text not found in the file")
	}

	// The first key of that leaf page made the largest: keys out of order,
	// which only bbolt's consistency check sees.
	e := leafOff + 16
	pos := int64(binary.LittleEndian.Uint32(good[e+4:]))
	ksize := int(binary.LittleEndian.Uint32(good[e+8:]))
	if binary.LittleEndian.Uint16(good[leafOff+10:]) < 2 {
		t.Fatal("leaf page with fewer than 2 keys")
	}
	unordered := overwrite(e+pos, bytes.Repeat([]byte{0xff}, ksize))

	for _, tc := range []struct {
		name string
		file []byte
		want string // in the error
	}{
		{"zero-length", nil, "zero-length"},
		{"truncated to half", good[:len(good)/2], "truncated"},
		{"truncated inside the header", good[:40], "bbolt header"},
		{"truncated by one page in use", good[:(pages.hwm-1)*pageSize], "truncated"},
		{"random bytes only", randomBytes(len(good)), "not a valid bbolt file"},
		{"random bytes over a leaf page", overwrite(leafOff, randomBytes(pageSize)), "its header says page"},
		{"random bytes over a leaf page's elements", overwrite(leafOff+16, randomBytes(64)), "runs past the page"},
		{"random bytes over a branch page", overwrite(branchOff, randomBytes(pageSize)), "its header says page"},
		{"a branch pointing past the file", overwrite(branchOff+24, []byte{0xff, 0xff, 0xff, 0x7f}), "outside the"},
		{"invalid bytes inside a value", overwrite(valueAt, []byte{0xff, 0xfe, '"', '{'}), "undecodable"},
		{"keys out of order", unordered, "consistency check"},
		{"both meta pages wiped", overwrite(0, make([]byte, 2*pageSize)), "not a valid bbolt file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ucs.db")
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			err := openTestDB(path)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: err = %v, want ErrCorrupt", err)
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\r\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, path) {
				t.Errorf("error %q does not name %q and the file", msg, tc.want)
			}
			// Refusing changed nothing: the file is as it was.
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, tc.file) {
				t.Error("the refused file was modified")
			}
		})
	}

	t.Run("healthy file opens with its data", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ucs.db")
		if err := os.WriteFile(path, good, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.DBPath = path
		srv, err := New(cfg, telemetry.Discard())
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		tr, err := srv.store.transcript(context.Background(), "chat-m")
		if err != nil || tr == nil || len(tr.Events) != 20 {
			t.Fatalf("transcript of chat-m = %+v, %v; want 20 events", tr, err)
		}
	})

	t.Run("missing file is a new database", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sub", "ucs.db")
		if err := openTestDB(path); err != nil {
			t.Fatal(err)
		}
		if err := openTestDB(path); err != nil {
			t.Fatalf("reopen of the new database: %v", err)
		}
	})
}

// FuzzCheckHeader feeds arbitrary files to the header check and to the
// whole open: never a panic, and a refusal is always ErrCorrupt.
func FuzzCheckHeader(f *testing.F) {
	dir := f.TempDir()
	healthy := filepath.Join(dir, "healthy.db")
	cfg := DefaultConfig()
	cfg.DBPath = healthy
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		f.Fatal(err)
	}
	srv.Close()
	good, err := os.ReadFile(healthy)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, 0, byte(0))
	f.Add(good, 4096+20, byte(1))
	f.Add(good[:100], 10, byte(0xff))
	f.Fuzz(func(t *testing.T, file []byte, at int, b byte) {
		if len(file) > 0 {
			file = bytes.Clone(file)
			file[uint(at)%uint(len(file))] ^= b
		}
		err := checkHeader(bytes.NewReader(file), int64(len(file)))
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("checkHeader: %v is not ErrCorrupt", err)
		}
		if err != nil {
			return
		}
		path := filepath.Join(t.TempDir(), "ucs.db")
		if err := os.WriteFile(path, file, 0o600); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- openTestDB(path) }()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: %v is not ErrCorrupt", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("open hangs")
		}
	})
}
