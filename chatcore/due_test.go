package chatcore

import (
	"slices"
	"testing"
	"time"
)

// TestDueQueue drives a dueQueue through scripts of schedules and pops: a
// pop returns exactly the keys due by then, earliest first, each once; a
// key scheduled twice keeps its earlier time.
func TestDueQueue(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	type step struct {
		schedule map[string]int // key -> seconds after t0
		pop      int            // pop at t0 + pop seconds (after the schedules)
		want     []string
		left     int // keys held after the pop
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"empty", []step{{pop: 10, want: nil, left: 0}}},
		{"nothing due yet", []step{{schedule: map[string]int{"a": 5}, pop: 4, want: nil, left: 1}}},
		{"due exactly at its time", []step{{schedule: map[string]int{"a": 5}, pop: 5, want: []string{"a"}, left: 0}}},
		{"earliest first", []step{{schedule: map[string]int{"c": 3, "a": 1, "b": 2, "d": 9}, pop: 3, want: []string{"a", "b", "c"}, left: 1}}},
		{"popped once", []step{
			{schedule: map[string]int{"a": 1}, pop: 1, want: []string{"a"}, left: 0},
			{pop: 2, want: nil, left: 0},
		}},
		{"an earlier schedule wins", []step{
			{schedule: map[string]int{"a": 10}, pop: 0, want: nil, left: 1},
			{schedule: map[string]int{"a": 2}, pop: 2, want: []string{"a"}, left: 0},
		}},
		{"a later schedule keeps the earlier time", []step{
			{schedule: map[string]int{"a": 2}, pop: 0, want: nil, left: 1},
			{schedule: map[string]int{"a": 10}, pop: 2, want: []string{"a"}, left: 0},
		}},
		{"scheduled again after its pop", []step{
			{schedule: map[string]int{"a": 1, "b": 5}, pop: 1, want: []string{"a"}, left: 1},
			{schedule: map[string]int{"a": 7}, pop: 6, want: []string{"b"}, left: 1},
			{pop: 7, want: []string{"a"}, left: 0},
		}},
		{"in the past is due at once", []step{{schedule: map[string]int{"a": -5}, pop: 0, want: []string{"a"}, left: 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q dueQueue[string]
			for i, st := range tt.steps {
				keys := make([]string, 0, len(st.schedule))
				for k := range st.schedule {
					keys = append(keys, k)
				}
				slices.Sort(keys)
				for _, k := range keys {
					q.schedule(k, at(st.schedule[k]))
				}
				got := q.popDue(at(st.pop), nil)
				if !slices.Equal(got, st.want) {
					t.Fatalf("step %d: popDue(%d s) = %v, want %v", i, st.pop, got, st.want)
				}
				if n := q.len(); n != st.left {
					t.Fatalf("step %d: %d keys held, want %d", i, n, st.left)
				}
			}
		})
	}
}

// TestDueQueueMany schedules keys in a scrambled order and pops them in
// steps: every key comes out once, none before its time, in time order.
func TestDueQueueMany(t *testing.T) {
	var q dueQueue[int]
	t0 := time.Unix(0, 0)
	const n = 1000
	for i := range n {
		k := (i * 7919) % n // a permutation of 0..n-1
		q.schedule(k, t0.Add(time.Duration(k)*time.Millisecond))
	}
	var all []int
	for now := 0; now < n; now += 37 {
		got := q.popDue(t0.Add(time.Duration(now)*time.Millisecond), nil)
		for _, k := range got {
			if k > now {
				t.Fatalf("key %d popped at %d ms, before its time", k, now)
			}
		}
		all = append(all, got...)
	}
	all = append(all, q.popDue(t0.Add(time.Hour), nil)...)
	if len(all) != n || !slices.IsSorted(all) {
		t.Fatalf("popped %d keys (sorted %v), want %d in order", len(all), slices.IsSorted(all), n)
	}
	if _, ok := q.next(); ok || q.len() != 0 {
		t.Fatal("keys left after popping them all")
	}
}
