package oidc

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// counters are the provider's own monitoring counters; the hot paths only
// add to atomics, and the Prometheus collector reads them at scrape time.
type counters struct {
	delivered, retrying, abandoned  atomic.Uint64
	loginOK, loginFailed, loginSlow atomic.Uint64
}

var (
	descActivity   = prometheus.NewDesc("idleguard_activity_total", "Activity counted, by source.", []string{"source"}, nil)
	descEnds       = prometheus.NewDesc("idleguard_session_ends_total", "Sessions (or apps alone) ended, by reason.", []string{"reason"}, nil)
	descInMemory   = prometheus.NewDesc("idleguard_sessions_in_memory", "Authentication sessions held in memory.", nil, nil)
	descDeliveries = prometheus.NewDesc("idleguard_logout_deliveries_total", "Back-channel logout attempts, by outcome.", []string{"outcome"}, nil)
	descPending    = prometheus.NewDesc("idleguard_logout_outbox_pending", "Back-channel logouts not yet delivered or abandoned.", nil, nil)
	descLogins     = prometheus.NewDesc("idleguard_logins_total", "Password sign-ins, by result.", []string{"result"}, nil)
)

// collector reads the counters at scrape time.
type collector struct{ p *Provider }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActivity, descEnds, descInMemory, descDeliveries, descPending, descLogins} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.p.tracker.Stats()
	for source, n := range st.Activity {
		ch <- prometheus.MustNewConstMetric(descActivity, prometheus.CounterValue, float64(n), source)
	}
	for reason, n := range st.Ends {
		ch <- prometheus.MustNewConstMetric(descEnds, prometheus.CounterValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(descInMemory, prometheus.GaugeValue, float64(st.InMemory))
	k := &c.p.counters
	for outcome, v := range map[string]*atomic.Uint64{"delivered": &k.delivered, "retrying": &k.retrying, "abandoned": &k.abandoned} {
		ch <- prometheus.MustNewConstMetric(descDeliveries, prometheus.CounterValue, float64(v.Load()), outcome)
	}
	for result, v := range map[string]*atomic.Uint64{"success": &k.loginOK, "failure": &k.loginFailed, "throttled": &k.loginSlow} {
		ch <- prometheus.MustNewConstMetric(descLogins, prometheus.CounterValue, float64(v.Load()), result)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if n, err := c.p.store.PendingDeliveries(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(n))
	}
}

// metricsHandler serves Prometheus metrics: idleguard's own, and the Go
// runtime's and process's.
func (p *Provider) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{p}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
