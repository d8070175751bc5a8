package webapi

import (
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// decodeFormReference is decodeForm as it was: url.ParseQuery, then each
// name's first value (decodeValues).
func decodeFormReference(req *chatRequest, body []byte) error {
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return fmt.Errorf("%w: bad form encoding: %v", errMalformed, err)
	}
	return decodeValues(req, vals)
}

// formCases are bodies of every kind decodeForm meets: what GMS clients
// send, escapes, repeated names, empty and name-only parameters, userData,
// position placeholders, and bodies the fast path hands to url.ParseQuery
// (a semicolon, a bad escape, more than maxSimpleForm parameters); each
// holds at most one invalid value, so that the error is the same whatever
// the order of decoding.
var formCases = []string{
	"userId=u-1&secureKey=k-1&message=hello&clientMessageId=w42",
	"userId=u+1&secureKey=k%2B1&message=a%20b%26c%3Dd+e&clientMessageId=",
	"message=first&message=second&userId=a&userId=b",
	"a=1&&b=2&=v&k&message",
	"userData%5Bkey%5D=v&userData[k2]=v2&nickname=n&subject=s&emailAddress=e%40x",
	"transcriptPosition=NaN&userId=u", "transcriptPosition=12&alias=x", "transcriptPosition=-1",
	"message=caf%C3%A9+%E2%9C%93", "message=%ff", "message=a%0Db", "message=a%0D%0Ab",
	"userId=a;secureKey=b", "message=%zz", "message=%", "userId=1&message=%2",
	strings.Repeat("x=1&", 20) + "message=m",
	"", "&", "unknown=1&other=2",
}

// TestDecodeFormAsParseQuery: the map-free decoding gives the request (or
// the error) that url.ParseQuery and decodeValues gave.
func TestDecodeFormAsParseQuery(t *testing.T) {
	for _, body := range formCases {
		var got, want chatRequest
		gerr := decodeForm(&got, []byte(body))
		werr := decodeFormReference(&want, []byte(body))
		if (gerr == nil) != (werr == nil) {
			t.Errorf("%q: error %v, want %v", body, gerr, werr)
			continue
		}
		if gerr != nil {
			if gerr.Error() != werr.Error() {
				t.Errorf("%q: error %q, want %q", body, gerr, werr)
			}
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q:\n got %+v\nwant %+v", body, got, want)
		}
	}
}

// FuzzDecodeForm checks any body against the reference.
func FuzzDecodeForm(f *testing.F) {
	for _, b := range formCases {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var got, want chatRequest
		gerr := decodeForm(&got, []byte(body))
		werr := decodeFormReference(&want, []byte(body))
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("%q: error %v, want %v", body, gerr, werr)
		}
		if gerr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\n got %+v\nwant %+v", body, got, want)
		}
	})
}

// TestDecodeFormAllocs: a send's form costs the decoding one allocation
// (the body as a string, which the values share), not a map and a slice
// per parameter.
func TestDecodeFormAllocs(t *testing.T) {
	body := []byte("userId=p-123&secureKey=0123456789abcdef&message=" + strings.Repeat("m", 64) + "&clientMessageId=w42")
	var req chatRequest
	if n := testing.AllocsPerRun(100, func() {
		req = chatRequest{}
		if err := decodeForm(&req, body); err != nil {
			t.Fatal(err)
		}
	}); n > 1 {
		t.Errorf("%v allocations per form, want 1", n)
	}
	if req.UserID != "p-123" || req.ClientMessageID != "w42" || len(req.Message) != 64 {
		t.Errorf("decoded %+v", req)
	}
}

// TestReadAllPooled: a body read into a buffer large enough allocates
// nothing.
func TestReadAllPooled(t *testing.T) {
	buf := make([]byte, 0, 512)
	r := strings.NewReader("")
	if n := testing.AllocsPerRun(100, func() {
		r.Reset("userId=u&secureKey=k&message=hello")
		b, err := readAll(r, buf[:0])
		if err != nil || string(b) != "userId=u&secureKey=k&message=hello" {
			t.Fatalf("%q, %v", b, err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per read, want 0", n)
	}
}
