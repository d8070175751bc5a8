package chatcore

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// scriptedStream is the backup's end of a Replicate stream whose primary
// sends a save progress (acknowledged), then, once that ack failed to go
// out, a Handover: the window in which the follower's ack sender has
// already stopped.
type scriptedStream struct {
	epoch     uint64
	ackFailed chan struct{}

	mu       sync.Mutex
	recvs    int
	sends    int
	answered *chatpb.ReplicaAck
}

func (s *scriptedStream) Send(a *chatpb.ReplicaAck) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sends++
	switch {
	case a.Hello != nil:
		return nil
	case a.HandoverEpoch != 0 || a.HandoverError != "":
		s.answered = a
		return nil
	}
	select {
	case <-s.ackFailed:
	default:
		close(s.ackFailed)
	}
	return errors.New("scripted: connection reset")
}

func (s *scriptedStream) Recv() (*chatpb.ReplicaMsg, error) {
	s.mu.Lock()
	s.recvs++
	n := s.recvs
	s.mu.Unlock()
	switch n {
	case 1:
		return &chatpb.ReplicaMsg{Seq: 1, Epoch: s.epoch, Primary: "core-a",
			Body: &chatpb.ReplicaMsg_Saved{Saved: &chatpb.SaveProgress{SessionId: "none", SavedThrough: 1}}}, nil
	case 2:
		select {
		case <-s.ackFailed:
		case <-time.After(5 * time.Second):
			return nil, errors.New("scripted: the ack was never sent")
		}
		return &chatpb.ReplicaMsg{Seq: 2, Epoch: s.epoch, Primary: "core-a",
			Body: &chatpb.ReplicaMsg_Handover{Handover: &chatpb.Handover{Epoch: s.epoch}}}, nil
	}
	return nil, io.EOF
}

// TestHandoverAfterAckSendFailed: a Handover arrives after the follower's
// ack sender stopped on a failed send. The follower must still take over and
// return (it once blocked forever handing the answer to the stopped sender,
// so the core never led and its shutdown hung).
func TestHandoverAfterAckSendFailed(t *testing.T) {
	store := newMemStore()
	cfg := testConfig()
	cfg.Name, cfg.Role, cfg.Peer = "core-b", RoleBackup, "127.0.0.1:1"
	c, err := New(cfg, store, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if _, err := store.ClaimEpoch(ctx, cfg.Cluster, 0, 1, "core-a"); err != nil {
		t.Fatal(err)
	}
	stream := &scriptedStream{epoch: 1, ackFailed: make(chan struct{})}
	_, cancel := context.WithCancel(ctx)
	defer cancel()
	ended := make(chan streamEnd, 1)
	go func() { ended <- c.replicate(ctx, cancel, stream, make(chan struct{})) }()
	select {
	case end := <-ended:
		if !end.handedOver {
			t.Fatalf("stream ended without the handover: %+v", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the follower hangs: the handover answer waits for an ack sender that stopped")
	}
	if !c.role.IsPrimary() || c.Epoch() != 2 {
		t.Fatalf("after the handover: primary %v epoch %d, want primary at epoch 2", c.role.IsPrimary(), c.Epoch())
	}
}
