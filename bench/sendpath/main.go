// Command sendpath measures which code one replicated Send runs in a pair
// of chat cores in one process (the primary's path, the backup's apply, the
// transcript save): the coverage counters are cleared just before the Send
// and written once UCS stored its event. docs/chatcore.md reports the
// files and Core methods it finds, before and after the split into parts:
//
//	go build -cover -covermode=atomic -coverpkg=./chatcore/...,./bench/sendpath \
//	    -o /tmp/sendpath ./bench/sendpath
//	/tmp/sendpath -dir /tmp/sendpath-send
//	go tool covdata func -i=/tmp/sendpath-send | awk '$NF != "0.0%"'
//
// -control measures the same window without the Send (background noise:
// tickers); it finds nothing when the window is quiet.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime/coverage"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

type signalStore struct {
	*ucsmock.MemStore
	saved chan string
}

func (s signalStore) Save(ctx context.Context, req chatcore.SaveRequest) (chatcore.SaveResult, error) {
	r, err := s.MemStore.Save(ctx, req)
	for _, ev := range req.Events {
		select {
		case s.saved <- ev.Text:
		default:
		}
	}
	return r, err
}

func (s signalStore) SaveBatch(ctx context.Context, reqs []chatcore.SaveRequest) ([]chatcore.SaveBatchResult, error) {
	r, err := s.MemStore.SaveBatch(ctx, reqs)
	for _, req := range reqs {
		for _, ev := range req.Events {
			select {
			case s.saved <- ev.Text:
			default:
			}
		}
	}
	return r, err
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func main() {
	dir := flag.String("dir", "/tmp/sendpath-out", "")
	control := flag.Bool("control", false, "measure the same window without the Send")
	flag.Parse()
	store := signalStore{ucsmock.NewMemStore(1), make(chan string, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	la, _ := net.Listen("tcp", "127.0.0.1:0")
	lb, _ := net.Listen("tcp", "127.0.0.1:0")
	start := func(name, role string, l, peer net.Listener) *chatcore.Core {
		cfg := chatcore.DefaultConfig()
		cfg.Name, cfg.Role, cfg.Peer = name, role, peer.Addr().String()
		cfg.TranscriptAutoSave = 1
		cfg.ServiceToken = "svc"
		c, err := chatcore.New(cfg, store, telemetry.Discard())
		must(err)
		hl, _ := net.Listen("tcp", "127.0.0.1:0")
		go c.Serve(ctx, l, hl)
		return c
	}
	a := start("core-a", chatcore.RolePrimary, la, lb)
	for a.Role() != chatcore.RolePrimary {
		time.Sleep(5 * time.Millisecond)
	}
	start("core-b", chatcore.RoleBackup, lb, la)
	conn, err := grpc.NewClient(la.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(err)
	cl := chatpb.NewChatClient(conn)
	waitQuiet := func() { // the backup is attached and has acknowledged everything
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := cl.Status(ctx, &chatpb.StatusRequest{})
			if err == nil && st.Backup == "core-b" && st.ReplicationLag == 0 {
				return
			}
			if time.Now().After(deadline) {
				must(fmt.Errorf("backup not attached and in step: %v %v", st, err))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitQuiet()
	r, err := cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "support", Nickname: "Ann", Subject: "help"})
	must(err)
	_, err = cl.Join(ctx, &chatpb.JoinRequest{SessionId: r.Auth.SessionId, Nickname: "Bob", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "svc"})
	must(err)
	send := func(text string) {
		_, err := cl.Send(ctx, &chatpb.SendRequest{Auth: r.Auth, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text})
		must(err)
		timeout := time.After(30 * time.Second)
		for {
			select {
			case t := <-store.saved:
				if t == text {
					return
				}
			case <-timeout:
				must(fmt.Errorf("%q never reached the store", text))
			}
		}
	}
	send("warm-up")
	waitQuiet()
	must(coverage.ClearCounters())
	t0 := time.Now()
	if *control {
		time.Sleep(5 * time.Millisecond)
	} else {
		send("measured")
	}
	// The saver settles the save after the store returned: give it 2 ms
	// (at worst a few of its blocks are missed; -control shows the noise).
	time.Sleep(2 * time.Millisecond)
	must(os.MkdirAll(*dir, 0o755))
	must(coverage.WriteMetaDir(*dir))
	must(coverage.WriteCountersDir(*dir))
	fmt.Println("window", time.Since(t0))
}
