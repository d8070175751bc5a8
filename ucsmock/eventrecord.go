package ucsmock

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// An event record is the value of one event in the bbolt store
// (transcripts/<chat>/<index>). It is written as eventRecordTag, the epoch
// of the save that stored it (8 bytes, big-endian), then the event in
// protobuf's binary form: one record in one bucket per event.
//
// Files written before records carried their epoch hold the event as
// protojson (a JSON object: its first byte is '{', never eventRecordTag)
// and its epoch in the event-epochs bucket. Those records are read as they
// are; a save that replaces one writes the new form and deletes its epoch
// entry, so nothing needs migrating at open.
//
// The record halves what a save writes to the file: the separate epoch
// bucket cost every saved chat a second nested bucket, and so a second
// dirty page per chat in each commit, and protojson is about twice the
// size of the binary form (fewer chats' transcripts stay inline in their
// parent page).
const eventRecordTag = 0x01

// eventRecordHeader is the tag and the epoch.
const eventRecordHeader = 1 + 8

// recordMarshal encodes events deterministically (map fields in key
// order), so that equal events make equal records; recordSized is the same
// encoding reusing the size that recordMarshal.Size just computed (the
// record is allocated once, and the event is sized once).
var (
	recordMarshal = proto.MarshalOptions{Deterministic: true}
	recordSized   = proto.MarshalOptions{Deterministic: true, UseCachedSize: true}
)

// encodeEventRecord returns the record of ev stored by a save of epoch. ev
// must not change meanwhile (a save's events are its own).
func encodeEventRecord(ev *chatpb.Event, epoch uint64) ([]byte, error) {
	buf := make([]byte, eventRecordHeader, eventRecordHeader+recordMarshal.Size(ev))
	buf[0] = eventRecordTag
	binary.BigEndian.PutUint64(buf[1:], epoch)
	out, err := recordSized.MarshalAppend(buf, ev)
	if err != nil {
		return nil, fmt.Errorf("marshal event %d: %w", ev.GetIndex(), err)
	}
	return out, nil
}

// decodeEventRecord decodes the record v into ev. embedded reports whether
// the record carried its epoch (a record of the current form); a protojson
// record of an older file does not, and its epoch is in event-epochs. ev
// shares no memory with v (v may be bbolt's memory map).
func decodeEventRecord(v []byte, ev *chatpb.Event) (epoch uint64, embedded bool, err error) {
	if len(v) > 0 && v[0] == eventRecordTag {
		if len(v) < eventRecordHeader {
			return 0, false, fmt.Errorf("event record of %d bytes, shorter than its header", len(v))
		}
		if err := proto.Unmarshal(v[eventRecordHeader:], ev); err != nil {
			return 0, false, fmt.Errorf("unmarshal event record: %w", err)
		}
		return binary.BigEndian.Uint64(v[1:eventRecordHeader]), true, nil
	}
	if err := protojson.Unmarshal(v, ev); err != nil {
		return 0, false, fmt.Errorf("unmarshal protojson event: %w", err)
	}
	return 0, false, nil
}
