package demo

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func writeStateFile(t *testing.T, path string, supervisor int) []byte {
	t.Helper()
	b := []byte(`{"supervisor":` + strconv.Itoa(supervisor) + `,"parts":[]}`)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheckFreeStateFile(t *testing.T) {
	dir := t.TempDir()
	addrs, err := FreeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "demo.json")
	if err := CheckFree(path, addrs); err != nil {
		t.Fatalf("no state file: %v", err)
	}

	// A state file of a supervisor that is gone does not stop a new demo.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	writeStateFile(t, path, gone.Process.Pid)
	if err := CheckFree(path, addrs); err != nil {
		t.Fatalf("state file of a dead supervisor: %v", err)
	}

	// One whose supervisor lives does, and CheckFree leaves it as it was.
	want := writeStateFile(t, path, os.Getppid())
	err = CheckFree(path, addrs)
	var re *RunningError
	if !errors.Is(err, ErrRunning) || !errors.As(err, &re) || re.Supervisor != os.Getppid() {
		t.Fatalf("state file of a live supervisor: %v", err)
	}
	abs, _ := filepath.Abs(path)
	if msg := err.Error(); !strings.Contains(msg, "supervisor pid "+strconv.Itoa(os.Getppid())) || !strings.Contains(msg, abs) {
		t.Fatalf("message does not name the supervisor and the state file: %s", msg)
	}
	if got, _ := os.ReadFile(path); string(got) != string(want) {
		t.Fatalf("CheckFree changed the state file: %s", got)
	}
}

func TestCheckFreePortInUse(t *testing.T) {
	addrs, err := FreeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addrs.WebAPI)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = CheckFree(filepath.Join(t.TempDir(), "demo.json"), addrs)
	var re *RunningError
	if !errors.As(err, &re) || re.Addr != addrs.WebAPI || re.Name != "WebAPI" || re.Supervisor != 0 {
		t.Fatalf("port %s held: %v (%+v)", addrs.WebAPI, err, re)
	}
	// The holder is this test process, which no demo started.
	if !strings.HasPrefix(re.Holder, strconv.Itoa(os.Getpid())+" (") {
		t.Errorf("holder %q, want this process %d", re.Holder, os.Getpid())
	}
	if !strings.Contains(err.Error(), addrs.WebAPI+" (WebAPI) is already in use") {
		t.Errorf("message: %s", err)
	}
}
