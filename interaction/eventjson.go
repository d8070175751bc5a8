package interaction

import (
	"slices"
	"strconv"

	"github.com/hachat/hachat/jsonenc"
)

// appendJSON appends e as encoding/json writes it (the members in order,
// the same omissions, attrs by sorted key, the same escaping): the data of
// the "chat" event, one per message on an agent's push channel, written
// under the server's lock, where json.Marshal's reflection was the biggest
// cost of forwarding an event. TestChatEventJSON holds the two equal, and
// TestChatEventJSONFields pins the members: a field added to chatEventJSON
// or participantJSON must be written here too.
func (e *chatEventJSON) appendJSON(b []byte) []byte {
	b = append(b, `{"chatId":`...)
	b = jsonenc.AppendString(b, e.ChatID)
	b = append(b, `,"index":`...)
	b = strconv.AppendUint(b, e.Index, 10)
	b = append(b, `,"kind":`...)
	b = jsonenc.AppendString(b, e.Kind)
	if e.Text != "" {
		b = append(b, `,"text":`...)
		b = jsonenc.AppendString(b, e.Text)
	}
	if p := e.From; p != nil {
		b = append(b, `,"from":{"participantId":`...)
		b = jsonenc.AppendString(b, p.ID)
		b = append(b, `,"nickname":`...)
		b = jsonenc.AppendString(b, p.Nickname)
		b = append(b, `,"type":`...)
		b = jsonenc.AppendString(b, p.Type)
		b = append(b, '}')
	}
	b = append(b, `,"visibility":`...)
	b = jsonenc.AppendString(b, e.Visibility)
	b = append(b, `,"utcTime":`...)
	b = strconv.AppendInt(b, e.UTCTime, 10)
	if e.ClientMessageID != "" {
		b = append(b, `,"clientMessageId":`...)
		b = jsonenc.AppendString(b, e.ClientMessageID)
	}
	if len(e.Attrs) > 0 {
		b = append(b, `,"attrs":{`...)
		keys := make([]string, 0, len(e.Attrs))
		for k := range e.Attrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = jsonenc.AppendString(b, k)
			b = append(b, ':')
			b = jsonenc.AppendString(b, e.Attrs[k])
		}
		b = append(b, '}')
	}
	return append(b, '}')
}
