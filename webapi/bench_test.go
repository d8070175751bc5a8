package webapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore"
)

// BenchmarkSendRealCore measures customer sends through webapi's HTTP API
// into a real chat core on loopback: one chat per parallel client, each send
// with its own clientMessageId. It reports sends/s and the p50/p99 latency of
// one HTTP send (request to acknowledged answer).
func BenchmarkSendRealCore(b *testing.B) {
	_, hs, _ := startRealStack(b, func(cfg *chatcore.Config) {
		cfg.SendRate = 1e9
		cfg.SendBurst = 1 << 30
	})
	client := hs.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	post := func(path string, v any) (response, error) {
		body, _ := json.Marshal(v)
		res, err := client.Post(hs.URL+path, "application/json", bytes.NewReader(body))
		if err != nil {
			return response{}, err
		}
		defer res.Body.Close()
		var r response
		err = json.NewDecoder(res.Body).Decode(&r)
		if err == nil && r.StatusCode != 0 {
			err = fmt.Errorf("HTTP %d statusCode %d %v", res.StatusCode, r.StatusCode, r.Errors)
		}
		return r, err
	}
	var mu sync.Mutex
	var lat []time.Duration
	var seq atomic.Int64
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		r, err := post("/genesys/2/chat/bench", map[string]any{"nickname": "bench"})
		if err != nil {
			b.Error(err)
			return
		}
		path := "/genesys/2/chat/bench/" + r.ChatID + "/send"
		local := make([]time.Duration, 0, 1024)
		for pb.Next() {
			t0 := time.Now()
			_, err := post(path, map[string]any{"userId": r.UserID, "secureKey": r.SecureKey,
				"message": "benchmark message", "clientMessageId": fmt.Sprint("b-", seq.Add(1))})
			if err != nil {
				b.Error(err)
				return
			}
			local = append(local, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "sends/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkSendToSSE measures what a browser sees: from a customer's HTTP
// send to the message arriving on that customer's SSE push channel, with 100
// chats open at once against a real chat core. It reports p50/p99 and
// deliveries/s.
func BenchmarkSendToSSE(b *testing.B) {
	const chats = 100
	_, hs, _ := startRealStack(b, func(cfg *chatcore.Config) {
		cfg.SendRate = 1e9
		cfg.SendBurst = 1 << 30
	})
	tr := hs.Client().Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 2 * chats
	tr.MaxConnsPerHost = 0
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	post := func(path string, v any) (response, error) {
		body, _ := json.Marshal(v)
		res, err := client.Post(hs.URL+path, "application/json", bytes.NewReader(body))
		if err != nil {
			return response{}, err
		}
		defer res.Body.Close()
		var r response
		if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
			return r, err
		}
		if r.StatusCode != 0 {
			return r, fmt.Errorf("statusCode %d %v", r.StatusCode, r.Errors)
		}
		return r, nil
	}
	type open struct {
		r      response
		events chan string // clientMessageIds of delivered messages
		stop   func()
	}
	streams := make([]open, chats)
	for i := range streams {
		r, err := post("/genesys/2/chat/bench", map[string]any{"nickname": fmt.Sprint("c", i)})
		if err != nil {
			b.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodGet, hs.URL+"/genesys/2/chat/bench/"+r.ChatID+"/events?userId="+r.UserID+"&secureKey="+r.SecureKey, nil)
		res, err := client.Do(req)
		if err != nil || res.StatusCode != 200 {
			b.Fatalf("open stream: %v", err)
		}
		ch := make(chan string, 1024)
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(res.Body)
			for sc.Scan() {
				line := sc.Text()
				if data, ok := strings.CutPrefix(line, "data: "); ok {
					var m message
					if json.Unmarshal([]byte(data), &m) == nil && m.Type == "Message" {
						ch <- m.ClientMessageID
					}
				}
			}
		}()
		streams[i] = open{r: r, events: ch, stop: func() { res.Body.Close(); <-done }}
	}
	defer func() {
		for _, s := range streams {
			s.stop()
		}
	}()
	var mu sync.Mutex
	var lat []time.Duration
	var seq atomic.Int64
	var wg sync.WaitGroup
	per := (b.N + chats - 1) / chats
	b.ResetTimer()
	start := time.Now()
	for i := range streams {
		wg.Add(1)
		go func(s open) {
			defer wg.Done()
			local := make([]time.Duration, 0, per)
			path := "/genesys/2/chat/bench/" + s.r.ChatID + "/send"
			for range per {
				id := fmt.Sprint("d-", seq.Add(1))
				t0 := time.Now()
				if _, err := post(path, map[string]any{"userId": s.r.UserID, "secureKey": s.r.SecureKey, "message": "m", "clientMessageId": id}); err != nil {
					b.Error(err)
					return
				}
				for got := range s.events {
					if got == id {
						break
					}
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}(streams[i])
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
