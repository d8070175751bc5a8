package webapi

import (
	"strconv"
	"sync"

	"github.com/hachat/hachat/jsonenc"
)

// The answer to every call and the data of every push channel event are
// written by hand: encoding/json's reflection and allocations were a
// visible part of a send's CPU. The bytes are encoding/json's, to the byte
// (TestResponseJSON, TestMessageJSON), and the field lists are pinned
// (TestJSONFieldsKnown): a field added to response, message, from or
// apiError must be added here too.

// appendJSON appends r as encoding/json writes it.
func (r *response) appendJSON(b []byte) []byte {
	b = append(b, `{"statusCode":`...)
	b = strconv.AppendInt(b, int64(r.StatusCode), 10)
	b = appendStr(b, `,"chatId":`, r.ChatID)
	b = appendStr(b, `,"userId":`, r.UserID)
	b = appendStr(b, `,"secureKey":`, r.SecureKey)
	b = appendStr(b, `,"alias":`, r.Alias)
	if r.Messages != nil {
		b = append(b, `,"messages":[`...)
		for i, m := range r.Messages {
			if i > 0 {
				b = append(b, ',')
			}
			if m == nil {
				b = append(b, "null"...)
				continue
			}
			b = m.appendJSON(b)
		}
		b = append(b, ']')
	}
	if r.NextPosition != 0 {
		b = append(b, `,"nextPosition":`...)
		b = strconv.AppendUint(b, r.NextPosition, 10)
	}
	b = append(b, `,"chatEnded":`...)
	b = strconv.AppendBool(b, r.ChatEnded)
	if r.Index != 0 {
		b = append(b, `,"index":`...)
		b = strconv.AppendUint(b, r.Index, 10)
	}
	if r.Duplicate {
		b = append(b, `,"duplicate":true`...)
	}
	if len(r.Errors) > 0 {
		b = append(b, `,"errors":[`...)
		for i, e := range r.Errors {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"code":`...)
			b = strconv.AppendInt(b, int64(e.Code), 10)
			b = append(b, `,"advice":`...)
			b = jsonenc.AppendString(b, e.Advice)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendJSON appends m as encoding/json writes it.
func (m *message) appendJSON(b []byte) []byte {
	b = append(b, `{"index":`...)
	b = strconv.AppendUint(b, m.Index, 10)
	b = append(b, `,"type":`...)
	b = jsonenc.AppendString(b, m.Type)
	b = appendStr(b, `,"text":`, m.Text)
	b = append(b, `,"utcTime":`...)
	b = strconv.AppendInt(b, m.UTCTime, 10)
	b = append(b, `,"from":{"nickname":`...)
	b = jsonenc.AppendString(b, m.From.Nickname)
	b = append(b, `,"participantId":`...)
	b = jsonenc.AppendString(b, m.From.ParticipantID)
	b = append(b, `,"type":`...)
	b = jsonenc.AppendString(b, m.From.Type)
	b = append(b, '}')
	b = appendStr(b, `,"clientMessageId":`, m.ClientMessageID)
	b = appendStr(b, `,"noticeType":`, m.NoticeType)
	b = appendStr(b, `,"reason":`, m.Reason)
	return append(b, '}')
}

// appendStr appends an omitempty string member: key (with its leading
// comma and colon) and value, unless the value is empty.
func appendStr(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return jsonenc.AppendString(append(b, key...), v)
}

// answers are the buffers of answers being written.
var answers = sync.Pool{New: func() any { return new([]byte) }}
