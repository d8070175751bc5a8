package ucsmock

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// The integrity check of the database file at open. A database that fails
// it is refused with an ErrCorrupt error of one line: ucs never starts on a
// damaged file (which would panic later, or look empty and lose every
// transcript). A missing file is a new database; an existing one must pass,
// in order:
//
//  1. the header check (checkHeader), before bbolt touches the file: not
//     zero-length, at least one valid meta page (bbolt's magic, version and
//     FNV-64a checksum), and the file at least as long as the pages that
//     meta page says are in use (a truncated file fails here; bbolt would
//     map the missing pages and fault on the first read);
//  2. bbolt's own consistency check (tx.Check): every reachable page once,
//     of the right type, inside the file, keys in order, freelist sound;
//  3. a decode of every record (chat metadata, epochs, events and the
//     epochs of older files' protojson events), which finds damage inside
//     values that leaves the page structure intact.
//
// Steps 2 and 3 read the file through bbolt's memory map, where a page
// reference outside the file faults the process; tx.Check even runs in a
// goroutine of its own, out of reach of any recover. The page walk of step 1
// is what makes them safe: it proves, reading the file itself, that every
// reachable page and element lies inside the file. The open and the decode
// also run under guard (debug.SetPanicOnFault and a recover that turns a
// panic into ErrCorrupt) as a second line for what the walk cannot foresee.

// bbolt's on-disk meta page (go.etcd.io/bbolt/internal/common): a 16-byte
// page header, then magic, version, page size, flags (4 bytes each), the
// root bucket (root page id, sequence), the freelist page id, the high water
// mark (pgid: pages in use), the txid and the FNV-64a checksum of the 56
// bytes before it.
const (
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	boltPageHeader  = 16
	boltMetaSumLen  = 56
	boltMetaLen     = boltMetaSumLen + 8
	boltMinPageSize = 512
	boltMaxPageSize = 1 << 16
)

// boltMeta is the part of a meta page the header check uses.
type boltMeta struct {
	pageSize uint32
	root     uint64 // page of the root bucket
	freelist uint64 // page of the freelist, or boltNoFreelist
	pgid     uint64 // high water mark: pages 0..pgid-1 are in use
	txid     uint64
}

// boltNoFreelist is the freelist page id of a database that does not sync
// its freelist.
const boltNoFreelist = ^uint64(0)

// parseBoltMeta decodes and validates the meta page at the start of b.
func parseBoltMeta(b []byte) (boltMeta, error) {
	if len(b) < boltPageHeader+boltMetaLen {
		return boltMeta{}, errors.New("short meta page")
	}
	m := b[boltPageHeader : boltPageHeader+boltMetaLen]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, errors.New("no bbolt magic")
	}
	if v := le.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("bbolt version %d, want %d", v, boltVersion)
	}
	h := fnv.New64a()
	h.Write(m[:boltMetaSumLen])
	if h.Sum64() != le.Uint64(m[boltMetaSumLen:]) {
		return boltMeta{}, errors.New("meta checksum mismatch")
	}
	meta := boltMeta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]),
		pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}
	if meta.pageSize < boltMinPageSize || meta.pageSize > boltMaxPageSize || meta.pageSize&(meta.pageSize-1) != 0 {
		return boltMeta{}, fmt.Errorf("bad page size %d", meta.pageSize)
	}
	if meta.pgid < 4 {
		return boltMeta{}, fmt.Errorf("high water mark %d below the 4 pages of an empty database", meta.pgid)
	}
	return meta, nil
}

// checkHeader is step 1 of the integrity check on an existing file f of size
// bytes. It picks the valid meta page with the highest txid, as bbolt does.
func checkHeader(f io.ReaderAt, size int64) error {
	if size == 0 {
		return fmt.Errorf("%w: zero-length file", ErrCorrupt)
	}
	first := make([]byte, boltPageHeader+boltMetaLen)
	if _, err := f.ReadAt(first, 0); err != nil {
		return fmt.Errorf("%w: %d bytes, too short for a bbolt header", ErrCorrupt, size)
	}
	var best *boltMeta
	m0, err0 := parseBoltMeta(first)
	if err0 == nil {
		best = &m0
	}
	// The second meta page is one page further: the first's page size if it
	// is valid, else each page size bbolt could have used.
	sizes := []uint32{4096, 512, 1024, 2048, 8192, 16384, 32768, 65536}
	if best != nil {
		sizes = []uint32{m0.pageSize}
	}
	var err1 error
	for _, ps := range sizes {
		second := make([]byte, boltPageHeader+boltMetaLen)
		if _, err := f.ReadAt(second, int64(ps)); err != nil {
			err1 = errors.New("no second meta page")
			continue
		}
		m1, err := parseBoltMeta(second)
		if err != nil {
			err1 = err
			continue
		}
		if best == nil || m1.txid > best.txid {
			best = &m1
		}
		break
	}
	if best == nil {
		return fmt.Errorf("%w: not a valid bbolt file (meta page 0: %v; meta page 1: %v)", ErrCorrupt, err0, err1)
	}
	if best.pgid > uint64(size) {
		return fmt.Errorf("%w: truncated: its %d pages are more than the %d bytes of the file", ErrCorrupt, best.pgid, size)
	}
	if need := int64(best.pgid) * int64(best.pageSize); size < need {
		return fmt.Errorf("%w: truncated: its pages need %d bytes, the file has %d", ErrCorrupt, need, size)
	}
	w := &pageWalker{f: f, pageSize: uint64(best.pageSize), hwm: best.pgid, seen: map[uint64]bool{}}
	if best.freelist != boltNoFreelist {
		if err := w.freelist(best.freelist); err != nil {
			return fmt.Errorf("%w: freelist: %v", ErrCorrupt, err)
		}
	}
	if err := w.walk(best.root, 0); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return nil
}

// Page flags and the leaf element flag of bbolt's format.
const (
	boltBranchPage   = 0x01
	boltLeafPage     = 0x02
	boltFreelistPage = 0x10
	boltBucketLeaf   = 0x01
	boltElemSize     = 16 // branch and leaf page elements are 16 bytes
	boltMaxDepth     = 64 // nested buckets and tree levels together
)

// pageWalker reads every page reachable from the root bucket through the
// file (never through a memory map), and checks that each page lies inside
// the pages in use, has the type its parent expects, is referenced once, and
// that every element lies inside its page. After it passes, bbolt can read
// the tree without touching memory outside the file.
type pageWalker struct {
	f        io.ReaderAt
	pageSize uint64
	hwm      uint64
	seen     map[uint64]bool
}

// read returns page id with its overflow pages, and marks them seen.
func (w *pageWalker) read(id uint64) ([]byte, error) {
	if id < 2 || id >= w.hwm {
		return nil, fmt.Errorf("page %d is outside the %d pages in use", id, w.hwm)
	}
	if w.seen[id] {
		return nil, fmt.Errorf("page %d is referenced twice", id)
	}
	hdr := make([]byte, boltPageHeader)
	if _, err := w.f.ReadAt(hdr, int64(id*w.pageSize)); err != nil {
		return nil, fmt.Errorf("page %d: %v", id, err)
	}
	le := binary.LittleEndian
	if got := le.Uint64(hdr); got != id {
		return nil, fmt.Errorf("page %d: its header says page %d", id, got)
	}
	overflow := uint64(le.Uint32(hdr[12:]))
	if id+overflow >= w.hwm {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the %d pages in use", id, overflow, w.hwm)
	}
	for i := id; i <= id+overflow; i++ {
		if w.seen[i] {
			return nil, fmt.Errorf("page %d is referenced twice", i)
		}
		w.seen[i] = true
	}
	p := make([]byte, (overflow+1)*w.pageSize)
	if _, err := w.f.ReadAt(p, int64(id*w.pageSize)); err != nil {
		return nil, fmt.Errorf("page %d: %v", id, err)
	}
	return p, nil
}

// freelist checks the freelist page: its type, and that every free page id
// is a page in use by the file.
func (w *pageWalker) freelist(id uint64) error {
	p, err := w.read(id)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	if f := le.Uint16(p[8:]); f != boltFreelistPage {
		return fmt.Errorf("page %d: type %#x, want freelist", id, f)
	}
	start, count := uint64(boltPageHeader), uint64(le.Uint16(p[10:]))
	if count == 0xFFFF {
		if len(p) < boltPageHeader+8 {
			return fmt.Errorf("page %d: no room for the count", id)
		}
		count = le.Uint64(p[boltPageHeader:])
		start += 8
	}
	if count > (uint64(len(p))-start)/8 {
		return fmt.Errorf("page %d: %d free ids do not fit the page", id, count)
	}
	for i := range count {
		free := le.Uint64(p[start+8*i:])
		if free < 2 || free >= w.hwm {
			return fmt.Errorf("page %d: free page %d is outside the %d pages in use", id, free, w.hwm)
		}
	}
	return nil
}

// walk checks the branch or leaf page id and everything below it.
func (w *pageWalker) walk(id uint64, depth int) error {
	if depth > boltMaxDepth {
		return fmt.Errorf("page %d: more than %d levels deep", id, boltMaxDepth)
	}
	p, err := w.read(id)
	if err != nil {
		return err
	}
	switch f := binary.LittleEndian.Uint16(p[8:]); f {
	case boltBranchPage:
		return w.branch(id, p, depth)
	case boltLeafPage:
		return w.leaf(fmt.Sprintf("page %d", id), p, depth)
	default:
		return fmt.Errorf("page %d: type %#x, want branch or leaf", id, f)
	}
}

// elements returns the count of p's elements after checking they fit.
func elements(where string, p []byte) (int, error) {
	n := int(binary.LittleEndian.Uint16(p[10:]))
	if boltPageHeader+n*boltElemSize > len(p) {
		return 0, fmt.Errorf("%s: %d elements do not fit its %d bytes", where, n, len(p))
	}
	return n, nil
}

// branch checks a branch page's keys and walks its children.
func (w *pageWalker) branch(id uint64, p []byte, depth int) error {
	where := fmt.Sprintf("page %d", id)
	n, err := elements(where, p)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s: empty branch page", where)
	}
	le := binary.LittleEndian
	for i := range n {
		e := boltPageHeader + i*boltElemSize
		pos, ksize := uint64(le.Uint32(p[e:])), uint64(le.Uint32(p[e+4:]))
		if uint64(e)+pos+ksize > uint64(len(p)) {
			return fmt.Errorf("%s: key %d runs past the page", where, i)
		}
		if err := w.walk(le.Uint64(p[e+8:]), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// leaf checks a leaf page (or a bucket's inline page) and walks the buckets
// it holds.
func (w *pageWalker) leaf(where string, p []byte, depth int) error {
	if depth > boltMaxDepth {
		return fmt.Errorf("%s: more than %d levels deep", where, boltMaxDepth)
	}
	n, err := elements(where, p)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	for i := range n {
		e := boltPageHeader + i*boltElemSize
		flags := le.Uint32(p[e:])
		pos, ksize, vsize := uint64(le.Uint32(p[e+4:])), uint64(le.Uint32(p[e+8:])), uint64(le.Uint32(p[e+12:]))
		end := uint64(e) + pos + ksize + vsize
		if end > uint64(len(p)) {
			return fmt.Errorf("%s: element %d runs past the page", where, i)
		}
		if flags&boltBucketLeaf == 0 {
			continue
		}
		v := p[end-vsize : end]
		if len(v) < 16 {
			return fmt.Errorf("%s: bucket %d: header of %d bytes", where, i, len(v))
		}
		if root := le.Uint64(v); root != 0 {
			if err := w.walk(root, depth+1); err != nil {
				return err
			}
			continue
		}
		inline := v[16:]
		if len(inline) < boltPageHeader || le.Uint16(inline[8:]) != boltLeafPage {
			return fmt.Errorf("%s: bucket %d: bad inline page", where, i)
		}
		if err := w.leaf(where+" inline bucket", inline, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// checkFile runs step 1 on the file at path. It reports whether the file
// exists: a missing file is a new database.
func checkFile(path string) (exists bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open db %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return true, fmt.Errorf("stat db %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return true, fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, path)
	}
	return true, checkHeader(f, st.Size())
}

// guard runs fn and turns a panic or a memory fault inside it (bbolt reading
// a damaged page through its memory map) into ErrCorrupt.
func guard(what string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, what, r)
		}
	}()
	return fn()
}

// checkDB runs steps 2 and 3 on an open database.
func checkDB(db *bolt.DB) error {
	return guard("consistency check", func() error {
		return db.View(func(tx *bolt.Tx) error {
			var first error
			n := 0
			for err := range tx.Check() {
				if first == nil {
					first = err
				}
				n++
			}
			if first != nil {
				return fmt.Errorf("%w: consistency check: %d problems, first: %v", ErrCorrupt, n, first)
			}
			return decodeAll(tx)
		})
	})
}

// decodeAll decodes every record of the known buckets; a bucket that is
// missing is created later, at open.
func decodeAll(tx *bolt.Tx) error {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	if b := tx.Bucket(bucketChats); b != nil {
		err := b.ForEach(func(k, v []byte) error {
			var m chatMeta
			if v == nil || json.Unmarshal(v, &m) != nil {
				return corrupt("chat %q: bad metadata", k)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if b := tx.Bucket(bucketEpochs); b != nil {
		err := b.ForEach(func(k, v []byte) error {
			var e Epoch
			if v == nil || json.Unmarshal(v, &e) != nil {
				return corrupt("epoch of %q: bad record", k)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if b := tx.Bucket(bucketTombstones); b != nil {
		err := b.ForEach(func(k, v []byte) error {
			var ts Tombstone
			if v == nil || json.Unmarshal(v, &ts) != nil || ts.ChatID != string(k) {
				return corrupt("tombstone of %q: bad record", k)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for _, name := range [][]byte{bucketTranscripts, bucketEventEpochs} {
		top := tx.Bucket(name)
		if top == nil {
			continue
		}
		err := top.ForEach(func(chat, v []byte) error {
			if v != nil {
				return corrupt("%s: %q is a value, want a bucket", name, chat)
			}
			return top.Bucket(chat).ForEach(func(k, v []byte) error {
				if len(k) != 8 || v == nil {
					return corrupt("%s of chat %q: bad key", name, chat)
				}
				if string(name) == string(bucketEventEpochs) {
					if len(v) != 8 {
						return corrupt("epoch of event %d of chat %q: %d bytes, want 8", binary.BigEndian.Uint64(k), chat, len(v))
					}
					return nil
				}
				if _, _, err := decodeEventRecord(v, &chatpb.Event{}); err != nil {
					return corrupt("event %d of chat %q: undecodable", binary.BigEndian.Uint64(k), chat)
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
	}
	return nil
}
