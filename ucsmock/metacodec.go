package ucsmock

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/hachat/hachat/jsonenc"
)

// The chats bucket holds each chat's chatMeta as the JSON that
// encoding/json writes for it. A save reads and rewrites that record, so
// encodeChatMeta and decodeChatMeta do it without reflection for the
// common record (plain ASCII names, which need no escaping), byte for byte
// what encoding/json writes and reads, and hand anything else to
// encoding/json.

// plainJSON reports whether s is written as itself between quotes by
// encoding/json: printable ASCII without '"', '\\' and the HTML
// characters encoding/json escapes.
func plainJSON(s string) bool {
	for i := range len(s) {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x80, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// encodeChatMeta encodes m as json.Marshal does.
func encodeChatMeta(m chatMeta) ([]byte, error) {
	if !plainJSON(m.Service) || !plainJSON(m.Writer) {
		return json.Marshal(m)
	}
	b := make([]byte, 0, 80+len(m.Service)+len(m.Writer))
	b = append(b, `{"service":"`...)
	b = append(b, m.Service...)
	b = append(b, `","ended":`...)
	b = strconv.AppendBool(b, m.Ended)
	b = append(b, `,"writer":"`...)
	b = append(b, m.Writer...)
	b = append(b, `","epoch":`...)
	b = strconv.AppendUint(b, m.Epoch, 10)
	b = append(b, `,"updatedUnixMs":`...)
	b = strconv.AppendInt(b, m.UpdatedUnix, 10)
	return append(b, '}'), nil
}

// decodeChatMeta decodes v into m as json.Unmarshal does.
func decodeChatMeta(v []byte, m *chatMeta) error {
	if fastChatMeta(v, m) {
		return nil
	}
	*m = chatMeta{}
	return json.Unmarshal(v, m)
}

// fastChatMeta decodes a record in exactly the form encodeChatMeta writes
// without encoding/json; it reports false for any other form.
func fastChatMeta(v []byte, m *chatMeta) bool {
	p := metaParser{v: v}
	var out chatMeta
	ok := p.lit(`{"service":`) && p.str(&out.Service) &&
		p.lit(`,"ended":`) && p.boolean(&out.Ended) &&
		p.lit(`,"writer":`) && p.str(&out.Writer) &&
		p.lit(`,"epoch":`) && p.uint(&out.Epoch) &&
		p.lit(`,"updatedUnixMs":`) && p.int(&out.UpdatedUnix) &&
		p.lit(`}`) && len(p.v) == 0
	if ok {
		*m = out
	}
	return ok
}

// metaParser consumes a chatMeta record from the front of v.
type metaParser struct{ v []byte }

func (p *metaParser) lit(s string) bool {
	if !bytes.HasPrefix(p.v, []byte(s)) {
		return false
	}
	p.v = p.v[len(s):]
	return true
}

// str reads a string that encoding/json would have written plain.
func (p *metaParser) str(s *string) bool {
	if len(p.v) == 0 || p.v[0] != '"' {
		return false
	}
	end := bytes.IndexByte(p.v[1:], '"')
	if end < 0 || !plainJSON(string(p.v[1:1+end])) {
		return false
	}
	*s = string(p.v[1 : 1+end])
	p.v = p.v[end+2:]
	return true
}

func (p *metaParser) boolean(b *bool) bool {
	switch {
	case p.lit("true"):
		*b = true
	case p.lit("false"):
		*b = false
	default:
		return false
	}
	return true
}

// digits returns the length of the number at the front of v (an optional
// minus with neg, then digits without a leading zero unless alone).
func (p *metaParser) digits(neg bool) int {
	n := 0
	if neg && n < len(p.v) && p.v[n] == '-' {
		n++
	}
	start := n
	for n < len(p.v) && p.v[n] >= '0' && p.v[n] <= '9' {
		n++
	}
	if n == start || (p.v[start] == '0' && n > start+1) {
		return 0
	}
	return n
}

func (p *metaParser) uint(u *uint64) bool {
	n := p.digits(false)
	x, err := strconv.ParseUint(string(p.v[:n]), 10, 64)
	if n == 0 || err != nil {
		return false
	}
	*u, p.v = x, p.v[n:]
	return true
}

func (p *metaParser) int(i *int64) bool {
	n := p.digits(true)
	x, err := strconv.ParseInt(string(p.v[:n]), 10, 64)
	if n == 0 || err != nil {
		return false
	}
	*i, p.v = x, p.v[n:]
	return true
}

// encodeBatchAnswer encodes a as json.NewEncoder(w).Encode does (with its
// final newline): a core's batch of 256 saves is answered with 256
// results, and encoding/json's reflection over them cost about as much as
// applying the saves. A result with an error goes through encoding/json.
func encodeBatchAnswer(a batchAnswer) ([]byte, error) {
	if a.Results == nil {
		return []byte("{\"results\":null}\n"), nil
	}
	b := make([]byte, 0, 16+len(a.Results)*96)
	b = append(b, `{"results":[`...)
	for i, r := range a.Results {
		if i > 0 {
			b = append(b, ',')
		}
		if r.Error != nil {
			v, err := json.Marshal(r)
			if err != nil {
				return nil, err
			}
			b = append(b, v...)
			continue
		}
		b = append(b, `{"chatId":`...)
		b = jsonenc.AppendString(b, r.ChatID)
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(r.Status), 10)
		b = append(b, `,"saved":`...)
		b = strconv.AppendInt(b, int64(r.Saved), 10)
		b = append(b, `,"unchanged":`...)
		b = strconv.AppendInt(b, int64(r.Unchanged), 10)
		b = append(b, `,"highestIndex":`...)
		b = strconv.AppendUint(b, r.HighestIndex, 10)
		b = append(b, '}')
	}
	return append(b, "]}\n"...), nil
}
