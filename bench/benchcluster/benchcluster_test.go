package benchcluster

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hachat/hachat/demo"
)

// TestWithoutInstances: a bench cluster without webapi and interaction has
// none of their instances at any stage, with or without coordination
// members (`hachat bench failover` with its default --coord-members 3
// once started interaction-2, which died for want of an accounts file).
func TestWithoutInstances(t *testing.T) {
	addrs, err := demo.FreeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, stage := range []demo.Stage{demo.StagePair, demo.StageMesh} {
		for _, members := range []int{0, 3} {
			layout := demo.Layout{Addrs: addrs, Stage: stage, DataDir: t.TempDir(), CoordMembers: members}
			full := demo.StandardPlan(layout)
			n := 0
			for _, p := range full.Parts {
				if p.Kind == demo.KindWebAPI || p.Kind == demo.KindInteraction {
					n++
				}
			}
			if n == 0 {
				t.Fatalf("stage %v, %d members: the standard plan has no instance to drop", stage, members)
			}
			plan := withoutInstances(full)
			for _, p := range plan.Parts {
				if p.Kind == demo.KindWebAPI || p.Kind == demo.KindInteraction {
					t.Errorf("stage %v, %d members: %s (%s) left in the bench cluster", stage, members, p.Name, p.Kind)
				}
			}
			if len(plan.Parts) != len(full.Parts)-n {
				t.Errorf("stage %v, %d members: %d parts left of %d, want %d", stage, members, len(plan.Parts), len(full.Parts), len(full.Parts)-n)
			}
		}
	}
}

// TestStartWithUnusableCoordDataDir: a CoordDataDir that is no writable
// directory fails the start with an error naming it, before any part runs
// (`hachat bench failover --etcd-data-dir`).
func TestStartWithUnusableCoordDataDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, dir string
	}{
		{"missing", filepath.Join(t.TempDir(), "missing")},
		{"a file", file},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bc, err := StartWith(t.Context(), demo.StageMesh, Options{CoordMembers: 3, CoordDataDir: tc.dir}, io.Discard)
			if err == nil {
				bc.Stop()
				t.Fatalf("started with coordination data under %s", tc.dir)
			}
			if !strings.Contains(err.Error(), tc.dir) {
				t.Errorf("error %q does not name %s", err, tc.dir)
			}
		})
	}
}

// TestRemoveDataKeepsLogs: Stop's clean-up removes ucs's database and the
// coordination members' data directories and keeps the logs.
func TestRemoveDataKeepsLogs(t *testing.T) {
	dir := t.TempDir()
	files := map[string]bool{ // path -> kept
		"core-a.log":                   true,
		"demo.json":                    true,
		"ucs.db":                       false,
		"etcd-1.etcd/member/wal/0.wal": false,
		"etcd-3.etcd/member/snap/db":   false,
	}
	for name := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removeData(dir)
	for name, kept := range files {
		_, err := os.Stat(filepath.Join(dir, name))
		if got := err == nil; got != kept {
			t.Errorf("%s: kept = %v, want %v (%v)", name, got, kept, err)
		}
	}
	for _, m := range []string{"etcd-1.etcd", "etcd-3.etcd"} {
		if _, err := os.Stat(filepath.Join(dir, m)); !os.IsNotExist(err) {
			t.Errorf("%s still there: %v", m, err)
		}
	}
	removeData("") // no directory: nothing to do, no panic
}
