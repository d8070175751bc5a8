package clusterctl

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
)

func TestPrimary(t *testing.T) {
	st := func(role string, epoch uint64) *chatpb.StatusResponse {
		return &chatpb.StatusResponse{Role: role, Epoch: epoch}
	}
	for _, tc := range []struct {
		name    string
		in      []CoreStatus
		want    string
		wantErr error
	}{
		{"none reachable", []CoreStatus{{Addr: "a", Err: "down"}, {Addr: "b", Err: "down"}}, "", ErrNoPrimary},
		{"only backups", []CoreStatus{{Addr: "a", Status: st("backup", 3)}}, "", ErrNoPrimary},
		{"one primary", []CoreStatus{{Addr: "a", Status: st("backup", 3)}, {Addr: "b", Status: st("primary", 3)}}, "b", nil},
		{"newest epoch wins", []CoreStatus{{Addr: "a", Status: st("primary", 4)}, {Addr: "b", Status: st("primary", 3)}}, "a", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Primary(tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if got.Addr != tc.want {
				t.Fatalf("primary %q, want %q", got.Addr, tc.want)
			}
		})
	}
}

type fakeCore struct {
	chatpb.UnimplementedChatServer
	status    *chatpb.StatusResponse
	switchTok string
}

func (f *fakeCore) Status(context.Context, *chatpb.StatusRequest) (*chatpb.StatusResponse, error) {
	return f.status, nil
}

func (f *fakeCore) Switchover(_ context.Context, in *chatpb.SwitchoverRequest) (*chatpb.SwitchoverResponse, error) {
	f.switchTok = in.GetAdminToken()
	return &chatpb.SwitchoverResponse{NewPrimary: "core-b", NewEpoch: f.status.GetEpoch() + 1}, nil
}

func serve(t *testing.T, f *fakeCore) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	chatpb.RegisterChatServer(g, f)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func TestStatusAndSwitchoverGoToThePrimary(t *testing.T) {
	a := &fakeCore{status: &chatpb.StatusResponse{Name: "core-a", Role: "backup", Epoch: 2}}
	b := &fakeCore{status: &chatpb.StatusResponse{Name: "core-b", Role: "primary", Epoch: 2}}
	addrs := []string{serve(t, a), serve(t, b), "127.0.0.1:1"}
	sts := Status(context.Background(), addrs, time.Second)
	if sts[0].Status.GetName() != "core-a" || sts[1].Status.GetName() != "core-b" || sts[2].Err == "" {
		t.Fatalf("statuses %+v", sts)
	}
	var sb strings.Builder
	if err := WriteTable(&sb, sts); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sb.String(), "dead") || !strings.Contains(sb.String(), "core-b") {
		t.Fatalf("table:\n%s", sb.String())
	}
	resp, err := Switchover(context.Background(), addrs, "tok", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if b.switchTok != "tok" || a.switchTok != "" || resp.GetNewEpoch() != 3 {
		t.Fatalf("switchover reached a=%q b=%q, resp %v", a.switchTok, b.switchTok, resp)
	}
}

func TestCoresFromState(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "demo.json")
	os.WriteFile(good, []byte(`{"parts":[{"name":"ucs","kind":"ucs","http":"127.0.0.1:7080"},
		{"name":"core-a","kind":"core","grpc":"127.0.0.1:7101"},{"name":"core-b","kind":"core","grpc":"127.0.0.1:7111"}]}`), 0o644)
	none := filepath.Join(dir, "none.json")
	os.WriteFile(none, []byte(`{"parts":[{"name":"ucs","kind":"ucs"}]}`), 0o644)
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"parts":`), 0o644)

	got, err := CoresFromState(good)
	if err != nil || strings.Join(got, ",") != "127.0.0.1:7101,127.0.0.1:7111" {
		t.Fatalf("cores %v, %v", got, err)
	}
	if _, err := CoresFromState(none); !errors.Is(err, ErrNoCore) {
		t.Fatalf("no cores: err %v", err)
	}
	if _, err := CoresFromState(bad); err == nil {
		t.Fatal("malformed state accepted")
	}
	if _, err := CoresFromState(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("missing state accepted")
	}
}

// A core that does not answer is dead (nothing listens) or unreachable
// (something listens but does not speak), with a short reason; the table
// names it as its peers know it and shows no raw gRPC error.
func TestStatusTellsDeadFromUnreachable(t *testing.T) {
	deadLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := deadLis.Addr().String()
	deadLis.Close()
	mute, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mute.Close() })
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	b := &fakeCore{status: &chatpb.StatusResponse{Name: "core-b", Role: "primary", Epoch: 3,
		Members: []*chatpb.Member{{Name: "core-a", State: "dead", GrpcAddr: dead}}}}
	sts := Status(context.Background(), []string{dead, mute.Addr().String(), serve(t, b)}, 500*time.Millisecond)
	if sts[0].Health != HealthDead || !strings.Contains(sts[0].Reason, "connection refused") {
		t.Errorf("closed port: health %q reason %q (err %s)", sts[0].Health, sts[0].Reason, sts[0].Err)
	}
	if sts[1].Health != HealthUnreachable || sts[1].Reason == "" {
		t.Errorf("mute listener: health %q reason %q (err %s)", sts[1].Health, sts[1].Reason, sts[1].Err)
	}
	if sts[2].Health != "" || sts[2].Status == nil {
		t.Errorf("answering core: %+v", sts[2])
	}
	var sb strings.Builder
	if err := WriteTable(&sb, sts); err != nil {
		t.Fatal(err)
	}
	table := sb.String()
	if !strings.Contains(table, "core-a  "+dead) || !strings.Contains(table, "dead") || !strings.Contains(table, "connection refused") {
		t.Errorf("table does not show core-a at %s as dead:\n%s", dead, table)
	}
	if strings.Contains(table, "rpc error") {
		t.Errorf("table shows a raw gRPC error:\n%s", table)
	}
}
