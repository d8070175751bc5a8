package clusterctl

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hachat/hachat/ucsmock"
)

func TestParseSelector(t *testing.T) {
	for _, tc := range []struct {
		chat, email, userData string
		want                  Selector
		bad                   bool
	}{
		{"c1", "", "", Selector{ChatID: "c1"}, false},
		{"", "ann@example.com", "", Selector{Customer: ucsmock.Customer{Email: "ann@example.com"}}, false},
		{"", "", "CustomerId=C-1", Selector{Customer: ucsmock.Customer{Key: "CustomerId", Value: "C-1"}}, false},
		{"", "", "", Selector{}, true},
		{"c1", "ann@example.com", "", Selector{}, true},
		{"c1", "", "k=v", Selector{}, true},
		{"", "ann@example.com", "k=v", Selector{}, true},
		{"", "ann", "", Selector{}, true},
	} {
		got, err := ParseSelector(tc.chat, tc.email, tc.userData)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseSelector(%q, %q, %q) = %+v, %v", tc.chat, tc.email, tc.userData, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), "give one of --chat, --email and --user-data") {
			t.Errorf("error %q does not say what to give", err)
		}
	}
}

func TestUCSFromState(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, body, want string
		err              error
	}{
		{"plain", `{"parts":[{"name":"ucs","kind":"ucs","http":"127.0.0.1:7080"}]}`, "http://127.0.0.1:7080", nil},
		{"mtls", `{"parts":[{"name":"ucs","kind":"ucs","http":"127.0.0.1:7080","tls":true}]}`, "https://127.0.0.1:7080", nil},
		{"no ucs", `{"parts":[{"name":"core-a","kind":"core","grpc":"127.0.0.1:7101"}]}`, "", ErrNoUCS},
	} {
		got, err := UCSFromState(write(tc.name+".json", tc.body))
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("%s: %q, %v; want %q, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}

func TestWriteDeleted(t *testing.T) {
	var b bytes.Buffer
	if err := WriteDeleted(&b, ucsmock.DeleteResult{}); err != nil || b.String() != "no chat found: nothing deleted\n" {
		t.Errorf("nothing: %q %v", b.String(), err)
	}
	b.Reset()
	res := ucsmock.DeleteResult{Deleted: []ucsmock.Tombstone{{ChatID: "c1", Service: "svc", Epoch: 3, Events: 7}},
		AlreadyDeleted: []ucsmock.Tombstone{{ChatID: "c2", DeletedUnixMs: 0}}}
	if err := WriteDeleted(&b, res); err != nil || !strings.Contains(b.String(), "deleted chat c1 (7 events, service \"svc\", epoch 3)") ||
		!strings.Contains(b.String(), "chat c2 was already deleted at 1970-01-01T00:00:00Z") {
		t.Errorf("output %q %v", b.String(), err)
	}
}
