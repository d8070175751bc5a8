package ucsmock

import (
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// The bbolt store keeps each event as protojson. A save encodes every new
// event once, and protojson's reflection was a tenth of the store's CPU, so
// encodeEventJSON writes the same JSON directly for chatpb.Event as the
// schema is today (fastEventJSON); any event it cannot write exactly, and
// every event should the schema change, goes through protojson. What it
// writes is protojson: protojson.Unmarshal reads it back to an equal event
// (TestEventJSON), and so does every reader of the store.

// eventFields and participantFields are the fields encodeEventJSON knows,
// by number, with their JSON names.
var (
	eventFields = map[protoreflect.FieldNumber]string{1: "sessionId", 2: "index", 3: "kind", 4: "from", 5: "visibility",
		6: "text", 7: "utcUnixMs", 8: "clientMessageId", 9: "attrs", 10: "epoch", 11: "keyHash", 12: "clientRequestId", 13: "secureKey"}
	participantFields = map[protoreflect.FieldNumber]string{1: "id", 2: "nickname", 3: "type", 4: "visibility"}
)

// fastEventJSON is whether the schema of chatpb.Event is the one
// encodeEventJSON knows: a field added, renamed or renumbered turns the
// fast path off (and fails TestEventJSONSchema).
var fastEventJSON = knownFields((&chatpb.Event{}).ProtoReflect().Descriptor(), eventFields) &&
	knownFields((&chatpb.Participant{}).ProtoReflect().Descriptor(), participantFields)

func knownFields(md protoreflect.MessageDescriptor, want map[protoreflect.FieldNumber]string) bool {
	fs := md.Fields()
	if fs.Len() != len(want) || md.Oneofs().Len() != 0 {
		return false
	}
	for i := range fs.Len() {
		if fd := fs.Get(i); want[fd.Number()] != fd.JSONName() {
			return false
		}
	}
	return true
}

// encodeEventJSON encodes ev as protojson.
func encodeEventJSON(ev *chatpb.Event) ([]byte, error) {
	if fastEventJSON {
		if b, ok := appendEventJSON(make([]byte, 0, 256), ev); ok {
			return b, nil
		}
	}
	return protojson.Marshal(ev)
}

// appendEventJSON appends ev as protojson writes it (up to whitespace and
// map order); ok is false for an event it cannot write exactly: a string
// that is not UTF-8 (protojson refuses it) or an enum value without a name.
func appendEventJSON(b []byte, ev *chatpb.Event) (_ []byte, ok bool) {
	w := jsonObject{b: append(b, '{'), ok: true}
	w.str("sessionId", ev.GetSessionId())
	w.uint("index", ev.GetIndex())
	w.enum("kind", ev.GetKind())
	if p := ev.GetFrom(); p != nil {
		w.key("from")
		pw := jsonObject{b: append(w.b, '{'), ok: w.ok}
		pw.str("id", p.GetId())
		pw.str("nickname", p.GetNickname())
		pw.enum("type", p.GetType())
		pw.enum("visibility", p.GetVisibility())
		w.b, w.ok = append(pw.b, '}'), pw.ok
	}
	w.enum("visibility", ev.GetVisibility())
	w.str("text", ev.GetText())
	if v := ev.GetUtcUnixMs(); v != 0 {
		w.key("utcUnixMs")
		w.b = append(strconv.AppendInt(append(w.b, '"'), v, 10), '"')
	}
	w.str("clientMessageId", ev.GetClientMessageId())
	if attrs := ev.GetAttrs(); len(attrs) > 0 {
		w.key("attrs")
		w.b = append(w.b, '{')
		keys := make([]string, 0, len(attrs))
		for k := range attrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				w.b = append(w.b, ',')
			}
			w.quote(k)
			w.b = append(w.b, ':')
			w.quote(attrs[k])
		}
		w.b = append(w.b, '}')
	}
	w.uint("epoch", ev.GetEpoch())
	w.str("keyHash", ev.GetKeyHash())
	w.str("clientRequestId", ev.GetClientRequestId())
	w.str("secureKey", ev.GetSecureKey())
	return append(w.b, '}'), w.ok
}

// jsonObject writes the members of a JSON object, leaving zero values out
// as protojson does.
type jsonObject struct {
	b  []byte
	n  int  // members written
	ok bool // false once a value could not be written exactly
}

func (w *jsonObject) key(k string) {
	if w.n > 0 {
		w.b = append(w.b, ',')
	}
	w.n++
	w.b = append(w.b, '"')
	w.b = append(w.b, k...)
	w.b = append(w.b, '"', ':')
}

func (w *jsonObject) str(k, v string) {
	if v != "" {
		w.key(k)
		w.quote(v)
	}
}

// uint writes a 64-bit unsigned integer as a string, as protojson does.
func (w *jsonObject) uint(k string, v uint64) {
	if v != 0 {
		w.key(k)
		w.b = append(strconv.AppendUint(append(w.b, '"'), v, 10), '"')
	}
}

// enum writes an enum value by name.
func (w *jsonObject) enum(k string, v interface {
	Number() protoreflect.EnumNumber
	Descriptor() protoreflect.EnumDescriptor
}) {
	if v.Number() == 0 {
		return
	}
	d := v.Descriptor().Values().ByNumber(v.Number())
	if d == nil {
		w.ok = false
		return
	}
	w.key(k)
	w.b = append(append(append(w.b, '"'), d.Name()...), '"')
}

// quote writes s as a JSON string.
func (w *jsonObject) quote(s string) {
	if !utf8.ValidString(s) {
		w.ok = false
		return
	}
	const hex = "0123456789abcdef"
	w.b = append(w.b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		w.b = append(w.b, s[start:i]...)
		switch c {
		case '"', '\\':
			w.b = append(w.b, '\\', c)
		case '\n':
			w.b = append(w.b, '\\', 'n')
		case '\r':
			w.b = append(w.b, '\\', 'r')
		case '\t':
			w.b = append(w.b, '\\', 't')
		default:
			w.b = append(w.b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	w.b = append(w.b, s[start:]...)
	w.b = append(w.b, '"')
}
