package chatcore

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestSendStreamBatches writes sends in batches (a stream message's first
// send with others as its more, one of them with a more of its own, which
// is ignored, and one refused): the core announces batches in its header,
// handles each send as if it had come alone (its own result, its own
// refusal) and answers with more only to a client that announced batches.
func TestSendStreamBatches(t *testing.T) {
	for _, tt := range []struct {
		name     string
		announce bool // the client's metadata announces batches
	}{
		{"client takes batches", true},
		{"client predates batches", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc := startCore(t, func(c *Config) { c.SendRate = 1e6; c.SendBurst = 1 << 20 })
			ctx := ctxT(t)
			const sessions, per, batch = 5, 20, 25
			auths := make([]*chatpb.Auth, sessions)
			for i := range auths {
				auths[i], _ = tc.chat(t)
			}
			sctx := ctx
			if tt.announce {
				sctx = metadata.AppendToOutgoingContext(ctx, chatpb.SendBatchHeader, "1")
			}
			st, err := tc.cl.SendStream(sctx)
			if err != nil {
				t.Fatal(err)
			}
			md, err := st.Header()
			if err != nil || len(md.Get(chatpb.SendBatchHeader)) == 0 {
				t.Fatalf("header %v, %v: want %s announced", md, err, chatpb.SendBatchHeader)
			}
			want := map[uint64]codes.Code{}
			var reqs []*chatpb.SendStreamRequest
			for i := range sessions * per {
				id := uint64(1 + i)
				want[id] = codes.OK
				r := &chatpb.SendStreamRequest{Id: id, Request: msg(auths[i%sessions], fmt.Sprint("m", i), fmt.Sprint("m", i)), TimeoutMs: 5000}
				reqs = append(reqs, r)
			}
			// A send refused in the middle of a batch; a nested more, ignored.
			bad := &chatpb.SendStreamRequest{Id: 999, Request: msg(&chatpb.Auth{SessionId: auths[0].SessionId, ParticipantId: auths[0].ParticipantId, SecureKey: "wrong"}, "x", "")}
			want[bad.Id] = codes.PermissionDenied
			reqs = append(reqs[:10], append([]*chatpb.SendStreamRequest{bad}, reqs[10:]...)...)
			reqs[3].More = []*chatpb.SendStreamRequest{{Id: 5000, Request: msg(auths[0], "nested", "nested")}}
			for len(reqs) > 0 {
				n := min(batch, len(reqs))
				first := reqs[0]
				first.More = append(first.More[:0], reqs[1:n]...)
				if err := st.Send(first); err != nil {
					t.Fatal(err)
				}
				reqs = reqs[n:]
			}
			if err := st.CloseSend(); err != nil {
				t.Fatal(err)
			}
			withMore := 0
			for len(want) > 0 {
				res, err := st.Recv()
				if err != nil {
					t.Fatalf("recv with %d unanswered: %v", len(want), err)
				}
				if len(res.More) > 0 {
					withMore++
				}
				for _, r := range append([]*chatpb.SendStreamResult{res}, res.More...) {
					code, ok := want[r.Id]
					if !ok {
						t.Fatalf("result %v: unknown id or answered twice", r)
					}
					if codes.Code(r.Code) != code || (code == codes.OK && r.Response.GetIndex() == 0) {
						t.Errorf("result %v, want code %s", r, code)
					}
					delete(want, r.Id)
				}
			}
			if _, err := st.Recv(); err != io.EOF {
				t.Fatalf("after the last answer: %v, want io.EOF", err)
			}
			if !tt.announce && withMore > 0 {
				t.Errorf("%d results with more to a client that did not announce batches", withMore)
			}
			// 101 sends in 5 stream messages (the nested one not counted).
			var h dto.Metric
			if err := tc.c.m.sendStreamBatch.Write(&h); err != nil {
				t.Fatal(err)
			}
			if n, sum := h.GetHistogram().GetSampleCount(), h.GetHistogram().GetSampleSum(); n != 5 || sum != 101 {
				t.Errorf("hachat_core_send_stream_batch_size: %d messages, %v sends; want 5, 101", n, sum)
			}
			for _, a := range auths {
				if n := len(tc.events(t, a)); n != 3+per { // started, two joins, the messages; not the nested one
					t.Errorf("session %s: %d events, want %d", a.SessionId, n, 3+per)
				}
			}
		})
	}
}

// TestResultWriterBatchesWhatWaits holds the stream's first answer while
// the other sends complete: they are written together after it, in one
// stream message when the client takes batches, one each otherwise, and
// every put has been written when the last put returns.
func TestResultWriterBatchesWhatWaits(t *testing.T) {
	for _, tt := range []struct {
		name     string
		batches  bool
		wantMsgs int
	}{
		{"batches", true, 2},
		{"one a message", false, 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			var mu sync.Mutex
			var msgs [][]uint64 // ids per stream message
			written := 0
			w := &resultWriter{batches: tt.batches, log: slog.New(slog.DiscardHandler), written: func(n int) { written += n }, send: func(r *chatpb.SendStreamResult) error {
				if r.Id == 1 {
					<-release
				}
				ids := []uint64{r.Id}
				for _, m := range r.More {
					ids = append(ids, m.Id)
				}
				mu.Lock()
				msgs = append(msgs, ids)
				mu.Unlock()
				return nil
			}}
			var wg sync.WaitGroup
			wg.Go(func() { w.put(&chatpb.SendStreamResult{Id: 1}) })
			waitFor(t, "the first answer writing", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.writing })
			for id := uint64(2); id <= 10; id++ {
				w.put(&chatpb.SendStreamResult{Id: id}) // returns at once: 1 is writing
			}
			close(release)
			wg.Wait()
			mu.Lock()
			defer mu.Unlock()
			if len(msgs) != tt.wantMsgs {
				t.Fatalf("stream messages %v, want %d", msgs, tt.wantMsgs)
			}
			n := 0
			for _, m := range msgs {
				n += len(m)
			}
			if n != 10 || written != 10 {
				t.Errorf("stream messages %v carry %d results (%d reported written), want 10", msgs, n, written)
			}
		})
	}
}
