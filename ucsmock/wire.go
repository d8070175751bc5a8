package ucsmock

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// saveBody is the JSON body of POST /ucs/v1/transcripts/{chatId}.
type saveBody struct {
	Service string            `json:"service"`
	Epoch   uint64            `json:"epoch"`
	Writer  string            `json:"writer"`
	Events  []json.RawMessage `json:"events"`
	Ended   bool              `json:"ended"`
}

// transcriptBody is the JSON answer of GET /ucs/v1/transcripts/{chatId}.
type transcriptBody struct {
	ChatID  string            `json:"chatId"`
	Service string            `json:"service"`
	Ended   bool              `json:"ended"`
	Writer  string            `json:"writer"`
	Epoch   uint64            `json:"epoch"`
	Events  []json.RawMessage `json:"events"`
}

// claimBody is the JSON body of POST /ucs/v1/epochs/{service}/claim.
type claimBody struct {
	Expect uint64 `json:"expect"`
	Epoch  uint64 `json:"epoch"`
	Holder string `json:"holder"`
	// IfSilentMs > 0: refuse while another holder renewed within it.
	IfSilentMs int64 `json:"ifSilentMs,omitempty"`
}

// renewBody is the body of POST /ucs/v1/epochs/{service}/renew.
type renewBody struct {
	Epoch  uint64 `json:"epoch"`
	Holder string `json:"holder"`
}

// errorBody is the JSON answer of every failed request. Code is what
// clients branch on.
type errorBody struct {
	Error       string `json:"error"`
	Code        string `json:"code"`
	Recoverable bool   `json:"recoverable"`
	Epoch       uint64 `json:"epoch,omitempty"`
	Holder      string `json:"holder,omitempty"`
	// HolderAlive and HeardAgoMs explain a claim refused because the
	// holder renewed within the asked silence (code epoch_conflict).
	HolderAlive bool  `json:"holderAlive,omitempty"`
	HeardAgoMs  int64 `json:"heardAgoMs,omitempty"`
	// Tombstone is the deleted chat's tombstone (code deleted).
	Tombstone *Tombstone `json:"tombstone,omitempty"`
}

// chatExportBody is one chat of a GDPR export.
type chatExportBody struct {
	ChatID   string            `json:"chatId"`
	Service  string            `json:"service"`
	Ended    bool              `json:"ended"`
	Writer   string            `json:"writer"`
	Epoch    uint64            `json:"epoch"`
	Customer CustomerData      `json:"customer"`
	Events   []json.RawMessage `json:"events"`
}

// customerExportBody is the answer of a GDPR export by customer.
type customerExportBody struct {
	Customer Customer         `json:"customer"`
	Chats    []chatExportBody `json:"chats"`
}

func toExportBody(ce ChatExport) (chatExportBody, error) {
	raw, err := marshalEvents(ce.Events)
	if err != nil {
		return chatExportBody{}, err
	}
	return chatExportBody{ChatID: ce.ChatID, Service: ce.Service, Ended: ce.Ended, Writer: ce.Writer, Epoch: ce.Epoch,
		Customer: ce.Customer, Events: raw}, nil
}

func fromExportBody(b chatExportBody) (ChatExport, error) {
	evs, err := unmarshalEvents(b.Events)
	if err != nil {
		return ChatExport{}, err
	}
	return ChatExport{Transcript: Transcript{ChatID: b.ChatID, Service: b.Service, Ended: b.Ended, Writer: b.Writer, Epoch: b.Epoch, Events: evs},
		Customer: b.Customer}, nil
}

// Error codes of errorBody.
const (
	codeInvalid        = "invalid"
	codeTooLarge       = "too_large"
	codeNotFound       = "not_found"
	codeStaleEpoch     = "stale_epoch"
	codeEpochConflict  = "epoch_conflict"
	codeConflict       = "conflict"
	codeUnavailable    = "unavailable"
	codeOutage         = "outage"
	codeNonRecoverable = "non_recoverable"
	codeForbidden      = "forbidden"
	codeUnauthorized   = "unauthorized"
	codeInternal       = "internal"
	codeDeleted        = "deleted"
)

// marshalEvents encodes events as protojson objects.
func marshalEvents(events []*chatpb.Event) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, len(events))
	for i, ev := range events {
		b, err := protojson.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("encode event %d: %w", i, err)
		}
		out[i] = b
	}
	return out, nil
}

// unmarshalEvents decodes protojson objects; unknown fields are an error.
func unmarshalEvents(raw []json.RawMessage) ([]*chatpb.Event, error) {
	out := make([]*chatpb.Event, len(raw))
	for i, r := range raw {
		ev := &chatpb.Event{}
		if err := protojson.Unmarshal(r, ev); err != nil {
			return nil, invalidf("event %d: %v", i, err)
		}
		out[i] = ev
	}
	return out, nil
}

// batchBody is the JSON body of POST /ucs/v1/transcripts:batch.
type batchBody struct {
	Saves []batchItem `json:"saves"`
}

// batchItem is one save of a batch: a save body plus its chat id.
type batchItem struct {
	ChatID  string            `json:"chatId"`
	Service string            `json:"service"`
	Epoch   uint64            `json:"epoch"`
	Writer  string            `json:"writer"`
	Events  []json.RawMessage `json:"events"`
	Ended   bool              `json:"ended"`
}

// batchAnswer is the 200 answer of POST /ucs/v1/transcripts:batch: one
// result per save, in the order of the request.
type batchAnswer struct {
	Results []batchResult `json:"results"`
}

// batchResult is the outcome of one save of a batch. Status is the HTTP
// status the same save alone would have got; Error is set unless it is 200.
type batchResult struct {
	ChatID       string     `json:"chatId"`
	Status       int        `json:"status"`
	Saved        int        `json:"saved"`
	Unchanged    int        `json:"unchanged"`
	HighestIndex uint64     `json:"highestIndex"`
	Error        *errorBody `json:"error,omitempty"`
}
