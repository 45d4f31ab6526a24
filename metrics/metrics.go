// Package metrics holds funnel's Prometheus collectors, all registered on
// one registry that cmd/funnel makes and passes down.
//
// Label values never come from client input: command labels are names from
// the command table (see CommandLabel), and every other label is a typed
// value's String.
package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/internal/buildinfo"
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
	Errors            *prometheus.CounterVec // by kind
	Latency           *HistogramVec          // by route
	ExclusiveConns    *prometheus.GaugeVec   // by state: in_use, idle
	ExclusiveWaiting  prometheus.Gauge
	PubSubChannels    *prometheus.GaugeVec // by kind: channel, pattern, shard
	PubSubSubscribers prometheus.Gauge
	PubSubMessages    prometheus.Counter
	Panics            prometheus.Counter
	MemoryWaits       prometheus.Counter // reads held back by --max-memory
	// UpstreamDuration is the time from writing a command upstream to its
	// reply, by command (labels as CommandLabel says).
	UpstreamDuration *HistogramVec
	// ExclusiveWait is how long each borrow of an exclusive-lane
	// connection waited for one.
	ExclusiveWait prometheus.Histogram
	// CacheRuleReads counts reads a --cache rule applied to, by rule (the
	// rule's pattern, from the configuration) and result: hit, joined or
	// miss. See CacheRule.
	CacheRuleReads *prometheus.CounterVec

	// Buffered is the request and reply bytes funnel holds for clients now
	// (funnel_buffered_bytes), which --max-memory bounds.
	Buffered atomic.Int64

	// Totals of the command counters, for INFO's Funnel section.
	ClientTotal, UpstreamTotal, LocalTotal atomic.Int64
	// Absorbed counts HSETs funnel answered itself under an absorb rule
	// (funnel_absorbed_writes_total).
	Absorbed atomic.Int64
	// SharedWaitJoins counts blocking commands that joined a shared wait
	// already under way instead of sending their own
	// (funnel_shared_waits_joined_total).
	SharedWaitJoins atomic.Int64
	// Bytes read from and written to client sockets and upstream sockets,
	// counted per read or write call (funnel_client_read_bytes_total ...).
	ClientRead, ClientWritten, UpstreamRead, UpstreamWritten atomic.Int64

	reg          prometheus.Registerer
	cacheWatched bool
	// inFlightWatched is set once WatchInFlight registered its gauge.
	inFlightWatched bool
	cacheStats      func() cache.Stats                // set by WatchCache; nil without a cache
	byCommand       sync.Map                          // label -> *CommandCounters
	byID            []atomic.Pointer[CommandCounters] // command ID -> what byCommand has for its name
	byRule          sync.Map                          // pattern -> *RuleCounters
}

// Labels funnel uses for commands that have no name of their own in the
// command table.
const (
	// UnknownCommand labels every command the table does not know.
	UnknownCommand = "unknown"
	// Unauthenticated labels what a client sends before it authenticates,
	// except the commands allowed then (AUTH, HELLO ...), so that nothing an
	// unauthenticated peer sends can even pick a label.
	Unauthenticated = "unauthenticated"
)

// CommandLabel returns the label for a command name: the name itself when
// the command table has it (subcommands as "client|list"), else
// UnknownCommand.
func CommandLabel(name string) string {
	if name == Unauthenticated || command.Known(name) {
		return name
	}
	return UnknownCommand
}

// CommandCounters are one command's counters, resolved once: a labelled
// counter lookup hashes its labels on every call, and each command passes
// through here at least twice.
type CommandCounters struct {
	m                       *Metrics
	label                   string
	client, upstream, local prometheus.Counter
	// duration is made on first use, so that commands never sent upstream
	// (PING, cache hits only) export no empty histogram.
	durationOnce sync.Once
	duration     prometheus.Observer
}

// Client counts a command received from a client.
func (c *CommandCounters) Client() { c.client.Inc(); c.m.ClientTotal.Add(1) }

// Upstream counts n commands written upstream: the bill.
func (c *CommandCounters) Upstream(n int) {
	c.upstream.Add(float64(n))
	c.m.UpstreamTotal.Add(int64(n))
}

// Local counts a command answered by funnel.
func (c *CommandCounters) Local() { c.local.Inc(); c.m.LocalTotal.Add(1) }

// UpstreamDuration is the command's funnel_upstream_duration_seconds
// histogram, which the pool tells each reply's time since its write.
func (c *CommandCounters) UpstreamDuration() prometheus.Observer {
	c.durationOnce.Do(func() { c.duration = c.m.UpstreamDuration.WithLabelValues(c.label) })
	return c.duration
}

// CommandOf returns the counters of a command of the table, as Command
// does, from a slice indexed by the command's ID rather than a map keyed
// by its name: it is called for every command a client sends.
func (m *Metrics) CommandOf(info *command.Info) *CommandCounters {
	slot := &m.byID[info.ID]
	if c := slot.Load(); c != nil {
		return c
	}
	c := m.Command(info.Name)
	slot.Store(c)
	return c
}

// Command returns the counters of the command name, labelled as
// CommandLabel says.
func (m *Metrics) Command(name string) *CommandCounters {
	if c, ok := m.byCommand.Load(name); ok {
		return c.(*CommandCounters)
	}
	label := CommandLabel(name)
	if c, ok := m.byCommand.Load(label); ok {
		return c.(*CommandCounters) // an unknown name: never stored under itself
	}
	c := &CommandCounters{
		m:        m,
		label:    label,
		client:   m.ClientCommands.WithLabelValues(label),
		upstream: m.UpstreamCommands.WithLabelValues(label),
		local:    m.LocalReplies.WithLabelValues(label),
	}
	actual, _ := m.byCommand.LoadOrStore(label, c)
	return actual.(*CommandCounters)
}

// RuleCounters are one cache rule's counters, resolved once.
type RuleCounters struct {
	hit, joined, miss prometheus.Counter
}

// Hit counts a read answered from the cache.
func (r *RuleCounters) Hit() { r.hit.Inc() }

// Joined counts a read that joined an identical one in flight.
func (r *RuleCounters) Joined() { r.joined.Inc() }

// Miss counts a read sent upstream.
func (r *RuleCounters) Miss() { r.miss.Inc() }

// CacheRule returns the counters of the cache rule with this pattern. The
// pattern must come from the configuration, never from a client: it
// becomes a label value.
func (m *Metrics) CacheRule(pattern string) *RuleCounters {
	if c, ok := m.byRule.Load(pattern); ok {
		return c.(*RuleCounters)
	}
	c := &RuleCounters{
		hit:    m.CacheRuleReads.WithLabelValues(pattern, "hit"),
		joined: m.CacheRuleReads.WithLabelValues(pattern, "joined"),
		miss:   m.CacheRuleReads.WithLabelValues(pattern, "miss"),
	}
	actual, _ := m.byRule.LoadOrStore(pattern, c)
	return actual.(*RuleCounters)
}

// New makes the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg:  reg,
		byID: make([]atomic.Pointer[CommandCounters], command.Count()),
		ClientCommands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_client_commands_total", Help: "Commands received from clients, by command.",
		}, []string{"command"}),
		UpstreamCommands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_upstream_commands_total", Help: "Commands written to the upstream, by command, login and INFO included. This is what a per-command bill counts.",
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
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_errors_total", Help: "Errors funnel answered or met, by kind.",
		}, []string{"kind"}),
		Latency: NewHistogramVec("funnel_request_duration_seconds", "Time from reading a command to having its reply, by route.", "route",
			[]float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10}),
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
		Panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "funnel_panics_recovered_total", Help: "Panics recovered in a client session; each closed only that client. Any is a bug: please report it with the logged stack.",
		}),
		MemoryWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "funnel_memory_waits_total", Help: "Times a client's reads were held back because funnel was at --max-memory.",
		}),
		UpstreamDuration: NewHistogramVec("funnel_upstream_duration_seconds", "Time from writing a command upstream to its reply, by command. A blocking command's includes its wait.", "command",
			[]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10}),
		ExclusiveWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "funnel_exclusive_wait_seconds",
			Help:    "Time a blocking command or WATCH waited for an exclusive-lane connection (0 when one was free).",
			Buckets: []float64{.0001, .001, .01, .1, .5, 1, 2.5, 5, 10, 30},
		}),
		CacheRuleReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "funnel_cache_rule_reads_total", Help: "Reads a --cache rule applied to, by rule pattern and result: hit (from the cache), joined (an identical read in flight) or miss (sent upstream).",
		}, []string{"rule", "result"}),
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "funnel_buffered_bytes", Help: "Request and reply bytes funnel holds for clients now, bounded by --max-memory.",
	}, func() float64 { return float64(m.Buffered.Load()) }))
	reg.MustRegister(m.ExclusiveConns, m.ExclusiveWaiting, m.PubSubChannels, m.PubSubSubscribers, m.PubSubMessages)
	reg.MustRegister(m.ClientCommands, m.UpstreamCommands, m.LocalReplies, m.ClientConnections,
		m.ClientsAccepted, m.ClientsClosed, m.UpstreamConns, m.UpstreamDials, m.Errors, m.Latency,
		m.Panics, m.MemoryWaits)
	reg.MustRegister(m.UpstreamDuration, m.ExclusiveWait, m.CacheRuleReads)
	counter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(
		counter("funnel_absorbed_writes_total", "HSET and HMSET commands funnel answered itself because the hash held those values already (--absorb).", &m.Absorbed),
		counter("funnel_shared_waits_joined_total", "Blocking commands that joined a shared wait under way instead of sending their own (--share-waits).", &m.SharedWaitJoins),
		counter("funnel_client_read_bytes_total", "Bytes read from client connections.", &m.ClientRead),
		counter("funnel_client_written_bytes_total", "Bytes written to client connections.", &m.ClientWritten),
		counter("funnel_upstream_read_bytes_total", "Bytes read from upstream connections, login included.", &m.UpstreamRead),
		counter("funnel_upstream_written_bytes_total", "Bytes written to upstream connections, login included.", &m.UpstreamWritten),
	)
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "funnel_build_info", Help: "Always 1; its labels say which funnel this is.",
	}, []string{"version", "commit", "goversion"})
	buildInfo.WithLabelValues(buildinfo.Version, buildinfo.Commit, buildinfo.GoVersion()).Set(1)
	reg.MustRegister(buildInfo)
	return m
}

// WatchCache exports the cache's counters, read when scraped. Only the
// first call registers; later ones (a second server on one registry in
// tests) are ignored.
// WatchInFlight exports funnel_inflight_requests, read from inFlight when
// scraped: the count is kept per client connection, where it is needed
// anyway, so a request costs no update of a gauge every core shares. The
// first call wins, as with WatchCache.
func (m *Metrics) WatchInFlight(inFlight func() int64) {
	if m.inFlightWatched {
		return
	}
	m.inFlightWatched = true
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "funnel_inflight_requests", Help: "Requests sent upstream whose reply has not arrived.",
	}, func() float64 { return float64(inFlight()) }))
}

func (m *Metrics) WatchCache(stats func() cache.Stats) {
	if m.cacheWatched {
		return
	}
	m.cacheWatched = true
	m.cacheStats = stats
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
		counter("funnel_cache_dropped_fills_total", "Replies not cached because a write to their keys was pending or sent while they were in flight.", func(s cache.Stats) int64 { return s.DroppedFills }),
		counter("funnel_cache_evictions_total", "Entries evicted to stay within --cache-max-bytes.", func(s cache.Stats) int64 { return s.Evictions }),
		gauge("funnel_cache_bytes", "Bytes held by cached replies.", func(s cache.Stats) int64 { return s.Bytes }),
		gauge("funnel_cache_entries", "Cached replies.", func(s cache.Stats) int64 { return s.Entries }),
	)
}
