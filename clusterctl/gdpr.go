package clusterctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/ucsmock"
)

// ErrNoUCS means a state file lists no ucs part.
var ErrNoUCS = errors.New("no ucs")

// UCSFromState returns ucsmock's base URL (https when the demo runs mTLS)
// from a demo state file.
func UCSFromState(path string) (string, error) {
	st, err := demo.ReadState(path)
	if err != nil {
		return "", err
	}
	for _, p := range st.Parts {
		if p.Kind == demo.KindUCS && p.HTTP != "" {
			if p.TLS {
				return "https://" + p.HTTP, nil
			}
			return "http://" + p.HTTP, nil
		}
	}
	return "", fmt.Errorf("%w in %s", ErrNoUCS, path)
}

// Selector names what a GDPR export or delete applies to: one chat by id,
// or every chat of one customer.
type Selector struct {
	// ChatID selects one chat; empty selects by Customer.
	ChatID string
	// Customer selects a customer's chats when ChatID is empty.
	Customer ucsmock.Customer
}

// ParseSelector builds a Selector from the flags of `hachat ctl export` and
// `hachat ctl delete`: exactly one of chat, email and userData (KEY=VALUE).
func ParseSelector(chat, email, userData string) (Selector, error) {
	if chat != "" {
		if email != "" || userData != "" {
			return Selector{}, errors.New("give one of --chat, --email and --user-data")
		}
		return Selector{ChatID: chat}, nil
	}
	c, err := ucsmock.ParseCustomer(email, userData)
	if err != nil {
		return Selector{}, fmt.Errorf("give one of --chat, --email and --user-data: %w", err)
	}
	return Selector{Customer: c}, nil
}

// Privacy runs GDPR exports and deletes against ucsmock's admin API.
type Privacy struct {
	// UCS is the client of ucsmock.
	UCS *ucsmock.Client
	// AdminToken is ucsmock's admin token.
	AdminToken string
}

// Export returns the selected chat (ucsmock.ChatExport) or customer's
// chats (ucsmock.CustomerExport), ready to encode as JSON.
func (p Privacy) Export(ctx context.Context, sel Selector) (any, error) {
	if sel.ChatID != "" {
		return p.UCS.ExportChat(ctx, p.AdminToken, sel.ChatID)
	}
	return p.UCS.ExportCustomer(ctx, p.AdminToken, sel.Customer)
}

// Delete deletes the selected chat or customer's chats for good.
func (p Privacy) Delete(ctx context.Context, sel Selector) (ucsmock.DeleteResult, error) {
	if sel.ChatID != "" {
		return p.UCS.DeleteChat(ctx, p.AdminToken, sel.ChatID)
	}
	return p.UCS.DeleteCustomer(ctx, p.AdminToken, sel.Customer)
}

// WriteDeleted prints a delete's result, one line per chat.
func WriteDeleted(w io.Writer, res ucsmock.DeleteResult) error {
	if len(res.Deleted) == 0 && len(res.AlreadyDeleted) == 0 {
		_, err := fmt.Fprintln(w, "no chat found: nothing deleted")
		return err
	}
	for _, ts := range res.Deleted {
		if _, err := fmt.Fprintf(w, "deleted chat %s (%d events, service %q, epoch %d); tombstone written: no later save can restore it\n",
			ts.ChatID, ts.Events, ts.Service, ts.Epoch); err != nil {
			return err
		}
	}
	for _, ts := range res.AlreadyDeleted {
		if _, err := fmt.Fprintf(w, "chat %s was already deleted at %s\n", ts.ChatID,
			time.UnixMilli(ts.DeletedUnixMs).UTC().Format(time.RFC3339)); err != nil {
			return err
		}
	}
	return nil
}
