package workers

import (
	"context"
	"errors"
	"sync"
	"testing"
)

func TestRange(t *testing.T) {
	for _, tc := range []struct {
		name          string
		n, from, to   int
		failAt        int // -1: none
		wantErr       bool
		wantAllCalled bool
	}{
		{"all jobs", 4, 0, 100, -1, false, true},
		{"offset range", 3, 10, 20, -1, false, true},
		{"more workers than jobs", 50, 0, 5, -1, false, true},
		{"empty", 4, 5, 5, -1, false, true},
		{"first error stops", 2, 0, 1000, 3, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			seen := map[int]int{}
			err := Range(context.Background(), tc.n, tc.from, tc.to, nil, func(ctx context.Context, i int) error {
				mu.Lock()
				seen[i]++
				mu.Unlock()
				if i == tc.failAt {
					return errors.New("boom")
				}
				return nil
			})
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			for i, c := range seen {
				if i < tc.from || i >= tc.to || c != 1 {
					t.Fatalf("job %d ran %d times (range %d..%d)", i, c, tc.from, tc.to)
				}
			}
			if tc.wantAllCalled && len(seen) != tc.to-tc.from {
				t.Fatalf("%d jobs ran, want %d", len(seen), tc.to-tc.from)
			}
			if !tc.wantAllCalled && len(seen) == tc.to-tc.from {
				t.Fatal("the error did not stop the range")
			}
		})
	}
	stop := make(chan struct{})
	close(stop)
	ran := false
	if err := Range(context.Background(), 2, 0, 10, stop, func(context.Context, int) error { ran = true; return nil }); err != nil || ran {
		t.Fatalf("closed stop: err %v, ran %v", err, ran)
	}
}
