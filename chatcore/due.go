package chatcore

import (
	"container/heap"
	"sync"
	"time"
)

// dueQueue holds keys by the time they are next due: a min-heap with at
// most one entry per key, so that the janitor touches only what is due
// instead of every session. Scheduling a key already held keeps the earlier
// of the two times; whoever pops a key works out from its state when it is
// due next and schedules it again. Its lock is a leaf (doc.go).
type dueQueue[K comparable] struct {
	mu  sync.Mutex
	h   dueHeap[K]
	pos map[K]int // index in h of each key held
}

// dueEntry is one key and when it is due.
type dueEntry[K comparable] struct {
	at  time.Time
	key K
}

// schedule makes k due at at, or keeps it at its earlier time if it is
// already held.
func (q *dueQueue[K]) schedule(k K, at time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pos == nil {
		q.pos = make(map[K]int)
		q.h.pos = q.pos
	}
	if i, ok := q.pos[k]; ok {
		if at.Before(q.h.e[i].at) {
			q.h.e[i].at = at
			heap.Fix(&q.h, i)
		}
		return
	}
	heap.Push(&q.h, dueEntry[K]{at: at, key: k})
}

// popDue removes the keys due at now or before, earliest first, and
// appends them to buf.
func (q *dueQueue[K]) popDue(now time.Time, buf []K) []K {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.h.e) > 0 && !q.h.e[0].at.After(now) {
		buf = append(buf, heap.Pop(&q.h).(dueEntry[K]).key)
	}
	return buf
}

// next returns when the earliest key is due (ok false when none is held).
func (q *dueQueue[K]) next() (at time.Time, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.h.e) == 0 {
		return time.Time{}, false
	}
	return q.h.e[0].at, true
}

// len returns how many keys are held.
func (q *dueQueue[K]) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.h.e)
}

// dueHeap is container/heap's view of a dueQueue; it keeps pos in step.
type dueHeap[K comparable] struct {
	e   []dueEntry[K]
	pos map[K]int
}

func (h *dueHeap[K]) Len() int           { return len(h.e) }
func (h *dueHeap[K]) Less(i, j int) bool { return h.e[i].at.Before(h.e[j].at) }
func (h *dueHeap[K]) Swap(i, j int) {
	h.e[i], h.e[j] = h.e[j], h.e[i]
	h.pos[h.e[i].key] = i
	h.pos[h.e[j].key] = j
}
func (h *dueHeap[K]) Push(x any) {
	e := x.(dueEntry[K])
	h.pos[e.key] = len(h.e)
	h.e = append(h.e, e)
}
func (h *dueHeap[K]) Pop() any {
	last := len(h.e) - 1
	e := h.e[last]
	h.e[last] = dueEntry[K]{}
	h.e = h.e[:last]
	delete(h.pos, e.key)
	return e
}
