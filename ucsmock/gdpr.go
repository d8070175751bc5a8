package ucsmock

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// GDPR: export and delete of transcripts, by chat and by customer.
//
// A customer is whoever started a chat with a given email address, or with
// a given userData key and value (a customer id the site attached), as the
// chat's session-start event (index 1) recorded them: Genesys UCS matches
// contacts by their EmailAddress attribute the same way. A delete removes
// the chat's events and meta and leaves a Tombstone, which applySave checks
// after the epoch: no later save, of an old, the current or a newer epoch,
// writes to the chat again.

// Limits of a customer selector.
const (
	maxEmailLen         = 320 // RFC 5321 path limit, as webapi's emailAddress
	maxUserDataValueLen = 4096
)

// Customer selects one customer's chats: by Email (compared without regard
// to case or surrounding spaces), or by the userData pair Key = Value
// (compared exactly). Exactly one of Email and Key is set.
type Customer struct {
	// Email is the emailAddress the customer gave at chat start.
	Email string `json:"email,omitempty"`
	// Key and Value are a userData entry the customer's page attached at
	// chat start (userData[Key]=Value).
	Key   string `json:"userDataKey,omitempty"`
	Value string `json:"userDataValue,omitempty"`
}

// ParseCustomer builds a Customer from an email address or a userData
// "KEY=VALUE" pair (split at the first '='), exactly one of them non-empty:
// the selector of `hachat ctl export|delete --email | --user-data`. It
// refuses, with ErrInvalid, both or neither, a pair without '=', and
// whatever Customer.Validate refuses.
func ParseCustomer(email, userData string) (Customer, error) {
	c := Customer{Email: email}
	if userData != "" {
		key, value, ok := strings.Cut(userData, "=")
		if !ok {
			return Customer{}, invalidf("userData %q: want KEY=VALUE", userData)
		}
		c.Key, c.Value = key, value
		if key == "" {
			// Validate would take it for an email selector without email.
			return Customer{}, invalidf("missing userData key in %q", userData)
		}
	}
	return c.normalized()
}

// Validate reports, with ErrInvalid, a selector that is not exactly one of
// an email address (local@domain, at most 320 bytes) and a userData pair
// (key 1 to 128 bytes, value 1 to 4096 bytes), or whose text is not valid
// UTF-8 or holds control characters.
func (c Customer) Validate() error {
	_, err := c.normalized()
	return err
}

// normalized validates c and trims the email's surrounding spaces.
func (c Customer) normalized() (Customer, error) {
	email := strings.TrimSpace(c.Email)
	switch {
	case email != "" && (c.Key != "" || c.Value != ""):
		return Customer{}, invalidf("give an email address or a userData pair, not both")
	case email == "" && c.Key == "" && c.Value == "":
		return Customer{}, invalidf("missing customer: give an email address or a userData KEY=VALUE pair")
	case email != "":
		if err := validName("email", email, maxEmailLen, true); err != nil {
			return Customer{}, err
		}
		local, domain, ok := strings.Cut(email, "@")
		if !ok || local == "" || domain == "" || strings.Contains(domain, "@") {
			return Customer{}, invalidf("email %q is not an address (local@domain)", email)
		}
		return Customer{Email: email}, nil
	}
	if err := validName("userData key", c.Key, maxNameLen, true); err != nil {
		return Customer{}, err
	}
	if c.Value == "" {
		return Customer{}, invalidf("userData %q: empty value", c.Key)
	}
	if err := validName("userData value", c.Value, maxUserDataValueLen, true); err != nil {
		return Customer{}, err
	}
	return Customer{Key: c.Key, Value: c.Value}, nil
}

// String names the selector without its value (for logs: the value is
// personal data).
func (c Customer) String() string {
	if c.Email != "" {
		return "email"
	}
	return "userData[" + c.Key + "]"
}

// matches reports whether ev is the session-start event of a chat this
// customer started.
func (c Customer) matches(ev *chatpb.Event) bool {
	if ev.GetKind() != chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
		return false
	}
	a := ev.GetAttrs()
	if c.Email != "" {
		return strings.EqualFold(strings.TrimSpace(a["emailAddress"]), c.Email)
	}
	v, ok := a[userDataAttr+c.Key]
	return ok && v == c.Value
}

// userDataAttr prefixes the userData entries in a session-start event's
// attributes (chatcore writes userData[k] as attrs["userData.k"]).
const userDataAttr = "userData."

// CustomerData is what the customer gave at chat start, from the chat's
// session-start event.
type CustomerData struct {
	EmailAddress string            `json:"emailAddress,omitempty"`
	FirstName    string            `json:"firstName,omitempty"`
	LastName     string            `json:"lastName,omitempty"`
	Subject      string            `json:"subject,omitempty"`
	UserData     map[string]string `json:"userData,omitempty"`
}

// customerData reads CustomerData from a transcript's session-start event.
func customerData(events []*chatpb.Event) CustomerData {
	var d CustomerData
	for _, ev := range events {
		if ev.GetKind() != chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
			continue
		}
		a := ev.GetAttrs()
		d = CustomerData{EmailAddress: a["emailAddress"], FirstName: a["firstName"], LastName: a["lastName"], Subject: a["subject"]}
		for k, v := range a {
			if key, ok := strings.CutPrefix(k, userDataAttr); ok && key != "" {
				if d.UserData == nil {
					d.UserData = map[string]string{}
				}
				d.UserData[key] = v
			}
		}
		break
	}
	return d
}

// ChatExport is one chat's stored transcript with what its customer gave.
type ChatExport struct {
	Transcript
	// Customer is what the customer gave at chat start.
	Customer CustomerData
}

// CustomerExport is every stored chat of one customer.
type CustomerExport struct {
	// Customer is the selector asked for.
	Customer Customer
	// Chats are the customer's chats in chat id order (empty: none).
	Chats []ChatExport
}

// Tombstone is what stays of a deleted chat: enough to refuse its saves
// and to answer an audit, nothing of its content.
type Tombstone struct {
	// ChatID is the deleted chat.
	ChatID string `json:"chatId"`
	// Service is the chat's service ("" when UCS held nothing of it).
	Service string `json:"service,omitempty"`
	// Epoch is the service's epoch when the chat was deleted (0 when UCS
	// held nothing of it).
	Epoch uint64 `json:"epoch"`
	// DeletedUnixMs is when, by UCS's clock.
	DeletedUnixMs int64 `json:"deletedUnixMs"`
	// Events counts the events removed.
	Events int `json:"events"`
	// Scope is how it was deleted: "chat" (by id) or "customer".
	Scope string `json:"scope"`
}

// DeleteResult reports a GDPR delete.
type DeleteResult struct {
	// Deleted are the chats this delete removed (or, by id, tombstoned
	// though UCS held nothing of them yet).
	Deleted []Tombstone `json:"deleted"`
	// AlreadyDeleted are chats asked for by id that were deleted before;
	// nothing changed for them.
	AlreadyDeleted []Tombstone `json:"alreadyDeleted,omitempty"`
}

// The scopes of a Tombstone.
const (
	scopeChat     = "chat"
	scopeCustomer = "customer"
)

// exportChat reads one chat for export inside tx.
func exportChat(tx txn, chatID string) (ChatExport, error) {
	if ts, deleted, err := tx.tombstone(chatID); err != nil {
		return ChatExport{}, err
	} else if deleted {
		return ChatExport{}, &DeletedError{Tombstone: ts}
	}
	meta, ok, err := tx.chat(chatID)
	if err != nil {
		return ChatExport{}, err
	}
	if !ok {
		return ChatExport{}, fmt.Errorf("chat %s: %w", chatID, ErrNotFound)
	}
	evs, err := tx.events(chatID)
	if err != nil {
		return ChatExport{}, err
	}
	return ChatExport{
		Transcript: Transcript{ChatID: chatID, Service: meta.Service, Ended: meta.Ended, Writer: meta.Writer, Epoch: meta.Epoch, Events: evs},
		Customer:   customerData(evs),
	}, nil
}

// customerChats lists inside tx the stored chats whose session-start event
// (index 1) c matches, in chat id order.
func customerChats(tx txn, c Customer) ([]string, error) {
	ids, err := tx.chatIDs()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		se, ok, err := tx.event(id, 1)
		if err != nil {
			return nil, err
		}
		if ok && c.matches(se.event) {
			out = append(out, id)
		}
	}
	return out, nil
}

// exportCustomer reads every chat of c inside tx.
func exportCustomer(tx txn, c Customer) (CustomerExport, error) {
	ids, err := customerChats(tx, c)
	if err != nil {
		return CustomerExport{}, err
	}
	out := CustomerExport{Customer: c, Chats: []ChatExport{}}
	for _, id := range ids {
		ce, err := exportChat(tx, id)
		if err != nil {
			return CustomerExport{}, err
		}
		out.Chats = append(out.Chats, ce)
	}
	return out, nil
}

// applyDelete deletes one chat inside tx and leaves its tombstone. A chat
// deleted before keeps its first tombstone (already is true, nothing
// changes). A chat UCS holds nothing of is tombstoned all the same, so that
// its first save, late, is refused too.
func applyDelete(tx txn, chatID, scope string, nowUnixMs int64) (ts Tombstone, already bool, err error) {
	if ts, deleted, err := tx.tombstone(chatID); err != nil || deleted {
		return ts, deleted, err
	}
	ts = Tombstone{ChatID: chatID, DeletedUnixMs: nowUnixMs, Scope: scope}
	meta, exists, err := tx.chat(chatID)
	if err != nil {
		return ts, false, err
	}
	if exists {
		cur, err := tx.serviceEpoch(meta.Service)
		if err != nil {
			return ts, false, err
		}
		evs, err := tx.events(chatID)
		if err != nil {
			return ts, false, err
		}
		ts.Service, ts.Epoch, ts.Events = meta.Service, max(cur.Epoch, meta.Epoch), len(evs)
		if err := tx.removeChat(chatID); err != nil {
			return ts, false, err
		}
	}
	return ts, false, tx.putTombstone(ts)
}

// applyDeleteCustomer deletes every stored chat of c inside tx.
func applyDeleteCustomer(tx txn, c Customer, nowUnixMs int64) (DeleteResult, error) {
	ids, err := customerChats(tx, c)
	if err != nil {
		return DeleteResult{}, err
	}
	res := DeleteResult{Deleted: []Tombstone{}}
	for _, id := range ids {
		ts, _, err := applyDelete(tx, id, scopeCustomer, nowUnixMs)
		if err != nil {
			return DeleteResult{}, err
		}
		res.Deleted = append(res.Deleted, ts)
	}
	return res, nil
}

// validChatRef checks a chat id given to export or delete.
func validChatRef(chatID string) error {
	if !utf8.ValidString(chatID) {
		return invalidf("chatId is not valid UTF-8")
	}
	return validName("chatId", chatID, maxChatIDLen, true)
}

// storeExportChat reads one chat for export from the store.
func storeExportChat(ctx context.Context, s backend, chatID string) (ChatExport, error) {
	var out ChatExport
	err := s.view(ctx, func(tx txn) error {
		var err error
		out, err = exportChat(tx, chatID)
		return err
	})
	return out, err
}

// storeExportCustomer reads every chat of c from the store.
func storeExportCustomer(ctx context.Context, s backend, c Customer) (CustomerExport, error) {
	var out CustomerExport
	err := s.view(ctx, func(tx txn) error {
		var err error
		out, err = exportCustomer(tx, c)
		return err
	})
	return out, err
}

// storeDeleteChat deletes one chat in the store and leaves its tombstone.
func storeDeleteChat(ctx context.Context, s backend, chatID string, nowUnixMs int64) (DeleteResult, error) {
	var res DeleteResult
	err := s.update(ctx, func(tx txn) error {
		ts, already, err := applyDelete(tx, chatID, scopeChat, nowUnixMs)
		res = deleteResult(ts, already)
		return err
	})
	return res, err
}

// storeDeleteCustomer deletes every chat of c in the store.
func storeDeleteCustomer(ctx context.Context, s backend, c Customer, nowUnixMs int64) (DeleteResult, error) {
	var res DeleteResult
	err := s.update(ctx, func(tx txn) error {
		var err error
		res, err = applyDeleteCustomer(tx, c, nowUnixMs)
		return err
	})
	return res, err
}

// deleteResult is the answer of a delete by id.
func deleteResult(ts Tombstone, already bool) DeleteResult {
	if already {
		return DeleteResult{Deleted: []Tombstone{}, AlreadyDeleted: []Tombstone{ts}}
	}
	return DeleteResult{Deleted: []Tombstone{ts}}
}

// MarshalJSON encodes the export as the API answers it (events as
// protojson chatpb.Event objects).
func (e ChatExport) MarshalJSON() ([]byte, error) {
	b, err := toExportBody(e)
	if err != nil {
		return nil, err
	}
	return json.Marshal(b)
}

// MarshalJSON encodes the export as the API answers it.
func (e CustomerExport) MarshalJSON() ([]byte, error) {
	body := customerExportBody{Customer: e.Customer, Chats: make([]chatExportBody, 0, len(e.Chats))}
	for _, ce := range e.Chats {
		b, err := toExportBody(ce)
		if err != nil {
			return nil, err
		}
		body.Chats = append(body.Chats, b)
	}
	return json.Marshal(body)
}
