package ucsmock

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// ContentTypeBatchProto is the content type of the binary form of a batch
// body (POST /ucs/v1/transcripts:batch): the protobuf encoding of
//
//	message SaveBatch { repeated Save saves = 1; }
//	message Save {
//	  string chat_id = 1;
//	  string service = 2;
//	  uint64 epoch = 3;
//	  string writer = 4;
//	  repeated bytes events = 5; // each a chatpb.Event, binary protobuf
//	  bool ended = 6;
//	}
//
// It carries exactly what the JSON body carries and is answered with the
// same JSON answer; it only spares both sides protojson, the most
// expensive part of a save. A body of any other content type is the JSON
// body, as before. docs/api-ucs.md documents both.
const ContentTypeBatchProto = "application/x-protobuf"

// Field numbers of SaveBatch and Save.
const (
	fieldBatchSaves  protowire.Number = 1
	fieldSaveChatID  protowire.Number = 1
	fieldSaveService protowire.Number = 2
	fieldSaveEpoch   protowire.Number = 3
	fieldSaveWriter  protowire.Number = 4
	fieldSaveEvents  protowire.Number = 5
	fieldSaveEnded   protowire.Number = 6
)

// isBatchProto reports whether r carries the binary batch body.
func isBatchProto(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == ContentTypeBatchProto
}

// appendSaveProto appends req as one saves field of a SaveBatch (tag,
// length, Save) to b. It fails only for an event protobuf cannot encode
// (a string that is not UTF-8).
func appendSaveProto(b []byte, req SaveRequest) ([]byte, error) {
	opts := proto.MarshalOptions{UseCachedSize: true}
	n := 0
	sizes := make([]int, len(req.Events))
	for i, ev := range req.Events {
		sizes[i] = opts.Size(ev)
		n += protowire.SizeTag(fieldSaveEvents) + protowire.SizeBytes(sizes[i])
	}
	n += sizeStringField(fieldSaveChatID, req.ChatID) + sizeStringField(fieldSaveService, req.Service) +
		sizeStringField(fieldSaveWriter, req.Writer)
	if req.Epoch != 0 {
		n += protowire.SizeTag(fieldSaveEpoch) + protowire.SizeVarint(req.Epoch)
	}
	if req.Ended {
		n += protowire.SizeTag(fieldSaveEnded) + 1
	}
	start := len(b)
	b = protowire.AppendTag(b, fieldBatchSaves, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = appendStringField(b, fieldSaveChatID, req.ChatID)
	b = appendStringField(b, fieldSaveService, req.Service)
	if req.Epoch != 0 {
		b = protowire.AppendTag(b, fieldSaveEpoch, protowire.VarintType)
		b = protowire.AppendVarint(b, req.Epoch)
	}
	b = appendStringField(b, fieldSaveWriter, req.Writer)
	for i, ev := range req.Events {
		b = protowire.AppendTag(b, fieldSaveEvents, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizes[i]))
		var err error
		if b, err = opts.MarshalAppend(b, ev); err != nil {
			return b[:start], fmt.Errorf("encode event %d: %w", i, err)
		}
	}
	if req.Ended {
		b = protowire.AppendTag(b, fieldSaveEnded, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	return b, nil
}

func sizeStringField(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// protoItem is one save of a binary batch body: its fields, the events
// still encoded.
type protoItem struct {
	chatID, service, writer string
	epoch                   uint64
	ended                   bool
	events                  [][]byte
}

// readBatchProto reads a binary batch body of at most limit bytes and
// splits it into its saves. A body that is not a SaveBatch (or has fields
// it does not know, as the JSON body refuses unknown fields) is an error
// for the whole request.
func readBatchProto(w http.ResponseWriter, r *http.Request, limit int64) ([]protoItem, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if mbe := new(http.MaxBytesError); errors.As(err, &mbe) {
		return nil, &tooLargeError{limit: limit}
	}
	if err != nil {
		return nil, invalidf("read body: %v", err)
	}
	return parseBatchProto(b)
}

// parseBatchProto splits a binary batch body into its saves.
func parseBatchProto(b []byte) ([]protoItem, error) {
	var items []protoItem
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, invalidf("batch body: %v", protowire.ParseError(n))
		}
		b = b[n:]
		if num != fieldBatchSaves || typ != protowire.BytesType {
			return nil, invalidf("batch body: unknown field %d", num)
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, invalidf("batch body: save %d: %v", len(items), protowire.ParseError(n))
		}
		b = b[n:]
		if len(items) == MaxBatchSaves {
			return nil, invalidf("more than %d saves in one batch", MaxBatchSaves)
		}
		it, err := parseSaveProto(v)
		if err != nil {
			return nil, invalidf("batch body: save %d: %v", len(items), err)
		}
		items = append(items, it)
	}
	return items, nil
}

// parseSaveProto decodes one Save message.
func parseSaveProto(b []byte) (protoItem, error) {
	var it protoItem
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return it, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case typ == protowire.BytesType && (num == fieldSaveChatID || num == fieldSaveService || num == fieldSaveWriter || num == fieldSaveEvents):
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return it, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case fieldSaveChatID:
				it.chatID = string(v)
			case fieldSaveService:
				it.service = string(v)
			case fieldSaveWriter:
				it.writer = string(v)
			default:
				it.events = append(it.events, v)
			}
		case typ == protowire.VarintType && (num == fieldSaveEpoch || num == fieldSaveEnded):
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return it, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			if num == fieldSaveEpoch {
				it.epoch = v
			} else {
				it.ended = v != 0
			}
		default:
			return it, fmt.Errorf("unknown field %d (wire type %d)", num, typ)
		}
	}
	return it, nil
}

// unmarshalProtoEvents decodes binary events; unknown fields are an error,
// as they are in the JSON form.
func unmarshalProtoEvents(raw [][]byte) ([]*chatpb.Event, error) {
	out := make([]*chatpb.Event, len(raw))
	for i, r := range raw {
		ev := &chatpb.Event{}
		if err := proto.Unmarshal(r, ev); err != nil {
			return nil, invalidf("event %d: %v", i, err)
		}
		if hasUnknown(ev.ProtoReflect()) {
			return nil, invalidf("event %d: unknown fields", i)
		}
		out[i] = ev
	}
	return out, nil
}

// hasUnknown reports whether m or a message inside it holds fields its
// schema does not know. It visits only the message-typed fields of m's
// descriptor that are set, rather than Range over every populated field:
// Range boxes each scalar into a Value, which cost more than the decoding
// of the event itself, on every event of every save.
func hasUnknown(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil || !m.Has(fd) {
				continue
			}
			found := false
			m.Get(fd).Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				found = hasUnknown(mv.Message())
				return !found
			})
			if found {
				return true
			}
		case fd.Message() == nil || !m.Has(fd):
		case fd.IsList():
			l := m.Get(fd).List()
			for j := range l.Len() {
				if hasUnknown(l.Get(j).Message()) {
					return true
				}
			}
		default:
			if hasUnknown(m.Get(fd).Message()) {
				return true
			}
		}
	}
	return false
}
