package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idleguard/idleguard/session"
)

// BenchmarkSSFEndReachesLongPolls measures how long an end takes to reach
// 100 receivers, each long-polling its own stream over HTTP (RFC 8936):
// from the end's commit to each receiver holding the SET. One op is one
// end; p50 and p99 are over every (end, receiver) pair. The target is
// 100 ms at p99. Signing dominates: one SET per receiver, each with its
// own aud and jti, so the key algorithm is a sub-benchmark.
func BenchmarkSSFEndReachesLongPolls(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) { benchEndReachesLongPolls(b, alg) })
	}
}

func benchEndReachesLongPolls(b *testing.B, alg string) {
	const receivers = 100
	opts := []envOption{withKeyAlgorithm(alg)}
	for i := range receivers {
		opts = append(opts, withSignalReceiver(fmt.Sprintf("rs%03d", i), "mail"))
	}
	e := newBenchEnv(b, opts...)
	defer e.Close()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	got := make(chan time.Time, receivers*4)
	var wg sync.WaitGroup
	for i := range receivers {
		id := fmt.Sprintf("rs%03d", i)
		token := e.benchServiceToken(b, id)
		code, body, err := e.bearer(http.MethodPost, "/ssf/streams", token, []byte(requestRevoked))
		if err != nil || code != http.StatusCreated {
			b.Fatalf("create stream: %d %s %v", code, body, err)
		}
		var st streamConfig
		if err := json.Unmarshal(body, &st); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); e.longPoll(ctx, token, st.StreamID, got) }()
	}
	waitForWaiters(b, e.p, receivers)

	var latencies []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		st, err := e.p.tracker.Start(ctx, "bench-user", []string{"pwd"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.p.tracker.Join(ctx, st.SID, "mail", []string{"openid"}); err != nil {
			b.Fatal(err)
		}
		waitForWaiters(b, e.p, receivers)
		b.StartTimer()
		ended := time.Now()
		if err := e.p.tracker.End(ctx, st.SID, session.ReasonLogout, "user"); err != nil {
			b.Fatal(err)
		}
		for range receivers {
			latencies = append(latencies, (<-got).Sub(ended))
		}
	}
	b.StopTimer()
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(pct(1), "max-ms")
	stop()
	wg.Wait()
}

// waitForWaiters waits until n long polls are held (the receivers have
// acknowledged and polled again).
func waitForWaiters(tb testing.TB, p *Provider, n int) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p.signals.mu.Lock()
		w := p.signals.waiters
		p.signals.mu.Unlock()
		if w >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	tb.Fatalf("fewer than %d long polls are waiting", n)
}

// longPoll is a receiver: it polls, notes when each SET arrived, and
// acknowledges it with the next poll.
func (e *benchEnv) longPoll(ctx context.Context, token, stream string, got chan<- time.Time) {
	var acks []string
	for ctx.Err() == nil {
		body, _ := json.Marshal(map[string]any{"ack": acks, "returnImmediately": false})
		code, data, err := e.bearer(http.MethodPost, "/ssf/poll/"+stream, token, body)
		at := time.Now()
		if err != nil || code != http.StatusOK {
			continue
		}
		var ans pollResponse
		if json.Unmarshal(data, &ans) != nil {
			continue
		}
		acks = acks[:0]
		for jti := range ans.Sets {
			acks = append(acks, jti)
			got <- at
		}
	}
}

func (e *benchEnv) bearer(method, path, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, e.issuer+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes(), err
}

func (e *benchEnv) benchServiceToken(tb testing.TB, clientID string) string {
	code, body, err := e.post("/oauth/token", "application/x-www-form-urlencoded", []byte("grant_type=client_credentials"),
		func(r *http.Request) { r.SetBasicAuth(clientID, clientID+"-secret") })
	if err != nil || code != http.StatusOK {
		tb.Fatalf("client_credentials: %d %s %v", code, body, err)
	}
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		tb.Fatal(err)
	}
	return out.AccessToken
}
