package coretest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// BenchmarkCustomerToAgentPush measures, on the real core, the time from a
// customer's Send to the message arriving on the agent's push channel
// through the Interaction Server (one chat, one message at a time).
func BenchmarkCustomerToAgentPush(b *testing.B) {
	e := startB(b)
	ta := e.login("a", "agent")
	e.must("POST", "/agent/v1/ready", ta, nil)
	ctx := context.Background()
	r, err := e.cc.StartSession(ctx, &chatpb.StartSessionRequest{Service: "svc", Nickname: "Bench"})
	if err != nil {
		b.Fatal(err)
	}
	cust, chat := r.Auth, r.Auth.SessionId

	req, _ := http.NewRequest("GET", e.url+"/agent/v1/events?token="+ta, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	texts := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev struct{ Kind, Text string }
				if json.Unmarshal([]byte(line), &ev) == nil && ev.Kind == "Message" {
					texts <- ev.Text
				}
			}
		}
		close(texts)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := e.must("GET", "/agent/v1/state", ta, nil)
		if len(st["offers"].([]any)) == 1 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("no offer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.must("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)

	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		text := fmt.Sprintf("m%d", i)
		start := time.Now()
		if _, err := e.cc.Send(ctx, &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text, ClientMessageId: text}); err != nil {
			b.Fatal(err)
		}
		for got := range texts {
			if got == text {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
