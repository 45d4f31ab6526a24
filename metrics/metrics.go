// Package metrics holds funnel's Prometheus collectors, all registered on
// one registry that cmd/funnel makes and passes down.
package metrics

import (
	"github.com/funnel-proxy/funnel/cache"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the collectors every part of funnel reports to. All names
// start with funnel_.
type Metrics struct {
	ClientCommands    *prometheus.CounterVec // by command: what clients asked for
	UpstreamCommands  *prometheus.CounterVec // by command: what was sent upstream (the bill)
	LocalReplies      *prometheus.CounterVec // by command: answered by funnel itself
	ClientConnections prometheus.Gauge
	ClientsAccepted   prometheus.Counter
	ClientsClosed     *prometheus.CounterVec // by reason
	UpstreamConns     *prometheus.GaugeVec   // by lane
	UpstreamDials     *prometheus.CounterVec // by result: ok, error
	InFlight          prometheus.Gauge       // requests sent upstream, reply not yet back
	Errors            *prometheus.CounterVec // by kind
	Latency           *prometheus.HistogramVec
	ExclusiveConns    *prometheus.GaugeVec // by state: in_use, idle
	ExclusiveWaiting  prometheus.Gauge
	PubSubChannels    *prometheus.GaugeVec // by kind: channel, pattern, shard
	PubSubSubscribers prometheus.Gauge
	PubSubMessages    prometheus.Counter

	reg          prometheus.Registerer
	cacheWatched bool
}

// New makes the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		ClientCommands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_client_commands_total", Help: "Commands received from clients, by command.",
		}, []string{"command"}),
		UpstreamCommands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_upstream_commands_total", Help: "Commands sent to the upstream, by command. This is what a per-command bill counts.",
		}, []string{"command"}),
		LocalReplies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_local_replies_total", Help: "Commands answered by funnel without the upstream, by command.",
		}, []string{"command"}),
		ClientConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "funnel_client_connections", Help: "Client connections open now.",
		}),
		ClientsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "funnel_client_connections_accepted_total", Help: "Client connections accepted.",
		}),
		ClientsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_client_connections_closed_total", Help: "Client connections closed, by reason.",
		}, []string{"reason"}),
		UpstreamConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "funnel_upstream_connections", Help: "Upstream connections open now, by lane.",
		}, []string{"lane"}),
		UpstreamDials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_upstream_dials_total", Help: "Upstream connection attempts, by result.",
		}, []string{"result"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "funnel_inflight_requests", Help: "Requests sent upstream whose reply has not arrived.",
		}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_errors_total", Help: "Errors funnel answered or met, by kind.",
		}, []string{"kind"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "funnel_request_duration_seconds",
			Help:    "Time from reading a command to having its reply, by route.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"route"}),
		ExclusiveConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "funnel_exclusive_connections", Help: "Exclusive-lane upstream connections (blocking commands, WATCH), by state.",
		}, []string{"state"}),
		ExclusiveWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "funnel_exclusive_waiting", Help: "Clients waiting for an exclusive connection.",
		}),
		PubSubChannels: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "funnel_pubsub_subscriptions", Help: "Channels and patterns funnel is subscribed to upstream, by kind.",
		}, []string{"kind"}),
		PubSubSubscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "funnel_pubsub_clients", Help: "Clients in subscribed mode.",
		}),
		PubSubMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "funnel_pubsub_messages_delivered_total", Help: "Pub/sub messages delivered to clients (one per receiving client).",
		}),
	}
	reg.MustRegister(m.ExclusiveConns, m.ExclusiveWaiting, m.PubSubChannels, m.PubSubSubscribers, m.PubSubMessages)
	reg.MustRegister(m.ClientCommands, m.UpstreamCommands, m.LocalReplies, m.ClientConnections,
		m.ClientsAccepted, m.ClientsClosed, m.UpstreamConns, m.UpstreamDials, m.InFlight, m.Errors, m.Latency)
	return m
}

// WatchCache exports the cache's counters, read when scraped. Only the
// first call registers; later ones (a second server on one registry in
// tests) are ignored.
func (m *Metrics) WatchCache(stats func() cache.Stats) {
	if m.cacheWatched {
		return
	}
	m.cacheWatched = true
	counter := func(name, help string, get func(cache.Stats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(get(stats())) })
	}
	gauge := func(name, help string, get func(cache.Stats) int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(get(stats())) })
	}
	m.reg.MustRegister(
		counter("funnel_cache_hits_total", "Reads answered from the cache.", func(s cache.Stats) int64 { return s.Hits }),
		counter("funnel_cache_misses_total", "Cacheable or coalescable reads sent upstream.", func(s cache.Stats) int64 { return s.Misses }),
		counter("funnel_cache_joined_total", "Reads that joined an identical read in flight.", func(s cache.Stats) int64 { return s.Joins }),
		counter("funnel_cache_dropped_fills_total", "Replies not cached because a write to their keys was sent while they were in flight.", func(s cache.Stats) int64 { return s.DroppedFills }),
		counter("funnel_cache_evictions_total", "Entries evicted to stay within --cache-max-bytes.", func(s cache.Stats) int64 { return s.Evictions }),
		gauge("funnel_cache_bytes", "Bytes held by cached replies.", func(s cache.Stats) int64 { return s.Bytes }),
		gauge("funnel_cache_entries", "Cached replies.", func(s cache.Stats) int64 { return s.Entries }),
	)
}
