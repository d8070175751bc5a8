package membership

import (
	"errors"
	"strings"
	"testing"
)

func TestMetaValidate(t *testing.T) {
	tests := []struct {
		name string
		meta Meta
		ok   bool
	}{
		{"primary core", Meta{Kind: KindCore, Role: RolePrimary, Epoch: 7, GRPCAddr: "127.0.0.1:7101", HTTPAddr: "127.0.0.1:7102"}, true},
		{"backup core", Meta{Kind: KindCore, Role: RoleBackup}, true},
		{"core before role", Meta{Kind: KindCore}, true},
		{"xds", Meta{Kind: KindXDS, GRPCAddr: "[::1]:7200"}, true},
		{"witness", Meta{Kind: KindWitness, HTTPAddr: "localhost:7211"}, true},
		{"no kind", Meta{}, false},
		{"unknown kind", Meta{Kind: "proxy"}, false},
		{"unknown role", Meta{Kind: KindCore, Role: "leader"}, false},
		{"witness with role", Meta{Kind: KindWitness, Role: RoleBackup}, false},
		{"webapi instance", Meta{Kind: KindWebAPI, HTTPAddr: "127.0.0.1:8082"}, true},
		{"interaction instance", Meta{Kind: KindInteraction, HTTPAddr: "127.0.0.1:8084"}, true},
		{"webapi with role", Meta{Kind: KindWebAPI, Role: RolePrimary}, false},
		{"grpc without port", Meta{Kind: KindCore, GRPCAddr: "127.0.0.1"}, false},
		{"http port 0", Meta{Kind: KindCore, HTTPAddr: "127.0.0.1:0"}, false},
		{"http port too big", Meta{Kind: KindCore, HTTPAddr: "127.0.0.1:70000"}, false},
		{"empty host", Meta{Kind: KindCore, HTTPAddr: ":7102"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.meta.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadMeta) {
				t.Fatalf("error %v does not wrap ErrBadMeta", err)
			}
			b, err := EncodeMeta(tc.meta)
			if (err == nil) != tc.ok {
				t.Fatalf("EncodeMeta error %v, want ok=%v", err, tc.ok)
			}
			if tc.ok {
				got, err := DecodeMeta(b)
				if err != nil || got != tc.meta {
					t.Fatalf("round trip: %+v, %v", got, err)
				}
			}
		})
	}
}

func TestEncodeMetaIsCompactJSON(t *testing.T) {
	b, err := EncodeMeta(Meta{Kind: KindCore, Role: RolePrimary, Epoch: 3, GRPCAddr: "127.0.0.1:7101", HTTPAddr: "127.0.0.1:7102"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"kind":"core","role":"primary","epoch":3,"grpc":"127.0.0.1:7101","http":"127.0.0.1:7102"}`
	if string(b) != want {
		t.Fatalf("EncodeMeta = %s, want %s", b, want)
	}
}

func TestMetaSizeLimit(t *testing.T) {
	// Find the largest address that fits, then one byte more must fail.
	base := Meta{Kind: KindCore, Role: RoleBackup, Epoch: 1<<64 - 1, HTTPAddr: "127.0.0.1:7102"}
	empty, _ := EncodeMeta(Meta{Kind: base.Kind, Role: base.Role, Epoch: base.Epoch, HTTPAddr: base.HTTPAddr, GRPCAddr: "h:1"})
	room := MaxMetaSize - len(empty)
	fits := base
	fits.GRPCAddr = strings.Repeat("h", 1+room) + ":1"
	if b, err := EncodeMeta(fits); err != nil || len(b) != MaxMetaSize {
		t.Fatalf("meta of exactly %d bytes: len %d, err %v", MaxMetaSize, len(b), err)
	}
	over := base
	over.GRPCAddr = strings.Repeat("h", 2+room) + ":1"
	if _, err := EncodeMeta(over); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("meta of %d bytes: err %v, want ErrMetaTooLarge", MaxMetaSize+1, err)
	}
}

func TestDecodeMetaRejects(t *testing.T) {
	tests := map[string]string{
		"empty":          ``,
		"not json":       `kind=core`,
		"unknown field":  `{"kind":"core","leader":true}`,
		"trailing data":  `{"kind":"core"}{"kind":"xds"}`,
		"trailing brace": `{"kind":"core"}}`,
		"wrong type":     `{"kind":"core","epoch":"7"}`,
		"negative epoch": `{"kind":"core","epoch":-1}`,
		"invalid":        `{"kind":"witness","role":"primary"}`,
		"too large":      `{"kind":"core","grpc":"` + strings.Repeat("a", 600) + `:1"}`,
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if m, err := DecodeMeta([]byte(in)); err == nil {
				t.Fatalf("DecodeMeta(%q) = %+v, want error", in, m)
			} else if !errors.Is(err, ErrBadMeta) && !errors.Is(err, ErrMetaTooLarge) {
				t.Fatalf("error %v wraps neither sentinel", err)
			}
		})
	}
}

func FuzzDecodeMeta(f *testing.F) {
	for _, s := range []string{
		`{"kind":"core","role":"primary","epoch":3,"grpc":"127.0.0.1:7101","http":"127.0.0.1:7102"}`,
		`{"kind":"witness","role":"","epoch":0,"grpc":"","http":"127.0.0.1:7211"}`,
		`{"kind":"xds"}`,
		`{"kind":"core"} `,
		`{"KIND":"core","Epoch":1}`,
		`{"kind":"core","epoch":1e3}`,
		`{}`, ``, `null`, `[]`, `{"kind":"core"}x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			if m != (Meta{}) {
				t.Fatalf("DecodeMeta returned %+v with error %v", m, err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("decoded meta %+v does not validate: %v", m, err)
		}
		enc, err := EncodeMeta(m)
		if err != nil {
			t.Fatalf("decoded meta %+v does not encode: %v", m, err)
		}
		if len(enc) > MaxMetaSize {
			t.Fatalf("encoding of %d bytes exceeds the limit", len(enc))
		}
		back, err := DecodeMeta(enc)
		if err != nil || back != m {
			t.Fatalf("round trip of %+v: %+v, %v", m, back, err)
		}
	})
}

func TestStateText(t *testing.T) {
	for _, s := range []State{StateAlive, StateSuspect, StateDead, StateLeft} {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back State
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Fatalf("%v round trip: %v, %v", s, back, err)
		}
	}
	var s State
	if err := s.UnmarshalText([]byte("zombie")); err == nil {
		t.Fatal("UnmarshalText accepted zombie")
	}
	if _, err := State(9).MarshalText(); err == nil {
		t.Fatal("MarshalText accepted State(9)")
	}
	if State(9).String() != "State(9)" || EventType(9).String() != "EventType(9)" {
		t.Fatal("unknown values print badly")
	}
}
