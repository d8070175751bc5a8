package webapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
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
