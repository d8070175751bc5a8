package webbench

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hachat/hachat/bench/chatbench"
)

var selfPID = os.Getpid()

// processRSS returns the resident set size of process pid.
func processRSS(pid int) (uint64, error) {
	return chatbench.ProcessRSS(pid)(context.Background())
}

// tracker records, per message number, when it was first sent, when its
// send was acknowledged, and when it reached the agent's and the
// customer's push channels (Unix nanoseconds; 0: not yet). Message i
// carries the client message id "w<i>".
type tracker struct {
	sent, acked, agentAt, pushAt []atomic.Int64

	sentN, ackedN, agentN, pushN atomic.Int64
}

func newTracker(n int) *tracker {
	return &tracker{sent: make([]atomic.Int64, n), acked: make([]atomic.Int64, n),
		agentAt: make([]atomic.Int64, n), pushAt: make([]atomic.Int64, n)}
}

func messageID(i int) string { return "w" + strconv.Itoa(i) }

// appendMessageID appends messageID(i) to b.
func appendMessageID(b []byte, i int) []byte { return strconv.AppendInt(append(b, 'w'), int64(i), 10) }

// messageNumber parses a client message id of the bench; ok is false for
// any other id.
func (t *tracker) messageNumber(id []byte) (int, bool) {
	if len(id) < 2 || id[0] != 'w' {
		return 0, false
	}
	n, err := strconv.Atoi(string(id[1:]))
	if err != nil || n < 0 || n >= len(t.sent) {
		return 0, false
	}
	return n, true
}

// delivered records the first arrival of message i at the agent (agent)
// or at the customer's push channel.
func (t *tracker) delivered(i int, agent bool, now int64) {
	if agent {
		if t.agentAt[i].CompareAndSwap(0, now) {
			t.agentN.Add(1)
		}
		return
	}
	if t.pushAt[i].CompareAndSwap(0, now) {
		t.pushN.Add(1)
	}
}

// latencies returns send-to-agent and send-to-push latencies of the
// messages in [from, to) that arrived.
func (t *tracker) latencies(from, to int) (agent, push []time.Duration) {
	for i := from; i < to; i++ {
		s := t.sent[i].Load()
		if s == 0 {
			continue
		}
		if a := t.agentAt[i].Load(); a != 0 {
			agent = append(agent, time.Duration(a-s))
		}
		if p := t.pushAt[i].Load(); p != 0 {
			push = append(push, time.Duration(p-s))
		}
	}
	return agent, push
}
