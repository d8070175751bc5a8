package jsonenc

// MaxKept is the capacity up to which Reuse keeps an encoding's buffer: a
// customer message, a send's answer or an agent's chat event fits many
// times over, and a buffer grown past it by a long message or transcript
// goes back to the garbage collector instead of staying pinned to an idle
// stream, a server or a pool.
const MaxKept = 4 << 10

// Reuse returns b emptied for the next encoding, or nil when b grew past
// MaxKept (the next encoding then starts a buffer of its own). The caller
// must be done with b's bytes, or have copied them, before it appends to
// the result: they share memory.
//
//	b := enc.appendJSON(s.buf[:0])
//	out.Queue(id, "", b) // copies b
//	s.buf = jsonenc.Reuse(b)
func Reuse(b []byte) []byte {
	if cap(b) > MaxKept {
		return nil
	}
	return b[:0]
}
