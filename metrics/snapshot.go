package metrics

import (
	"cmp"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Snapshot is the metrics read back at one moment, for the savings page.
// Every value comes from the collectors; nothing in it is client input
// except as far as the collectors' labels are (and they are bounded: see
// CommandLabel).
type Snapshot struct {
	// Totals of the command counters since start.
	Client, Upstream, Local int64
	// Absorbed writes and shared-wait joins since start.
	Absorbed, SharedWaitJoins int64
	// Cache is the cache's totals; zero without a cache.
	CacheHits, CacheJoins, CacheMisses int64
	// Bytes read and written, clients and upstream.
	ClientRead, ClientWritten, UpstreamRead, UpstreamWritten int64
	// ClientConnections is how many clients are connected now.
	ClientConnections int64
	// Lanes is the upstream connections open now, by lane.
	Lanes map[string]int64
	// Commands are the per-command totals, most upstream commands first.
	Commands []CommandCount
	// Rules are the per-cache-rule reads, by pattern in order.
	Rules []RuleCount
}

// CommandCount is one command label's totals.
type CommandCount struct {
	Command                 string
	Client, Upstream, Local int64
}

// RuleCount is one cache rule's reads by result.
type RuleCount struct {
	Rule              string
	Hit, Joined, Miss int64
}

// Snapshot reads the metrics now. It costs a walk of the labelled
// collectors, a few hundred series at most: fine once a second, not per
// command.
func (m *Metrics) Snapshot() Snapshot {
	s := Snapshot{
		Client: m.ClientTotal.Load(), Upstream: m.UpstreamTotal.Load(), Local: m.LocalTotal.Load(),
		Absorbed: m.Absorbed.Load(), SharedWaitJoins: m.SharedWaitJoins.Load(),
		ClientRead: m.ClientRead.Load(), ClientWritten: m.ClientWritten.Load(),
		UpstreamRead: m.UpstreamRead.Load(), UpstreamWritten: m.UpstreamWritten.Load(),
		Lanes: map[string]int64{},
	}
	if m.cacheStats != nil {
		cs := m.cacheStats()
		s.CacheHits, s.CacheJoins, s.CacheMisses = cs.Hits, cs.Joins, cs.Misses
	}
	s.ClientConnections = int64(value(m.ClientConnections))
	each(m.UpstreamConns, func(l map[string]string, v float64) { s.Lanes[l["lane"]] += int64(v) })

	byCmd := map[string]*CommandCount{}
	get := func(l map[string]string) *CommandCount {
		c := byCmd[l["command"]]
		if c == nil {
			c = &CommandCount{Command: l["command"]}
			byCmd[c.Command] = c
		}
		return c
	}
	each(m.ClientCommands, func(l map[string]string, v float64) { get(l).Client = int64(v) })
	each(m.UpstreamCommands, func(l map[string]string, v float64) { get(l).Upstream = int64(v) })
	each(m.LocalReplies, func(l map[string]string, v float64) { get(l).Local = int64(v) })
	for _, c := range byCmd {
		s.Commands = append(s.Commands, *c)
	}
	slices.SortFunc(s.Commands, func(a, b CommandCount) int {
		return cmp.Or(cmp.Compare(b.Upstream, a.Upstream), cmp.Compare(b.Client, a.Client), strings.Compare(a.Command, b.Command))
	})

	byRule := map[string]*RuleCount{}
	each(m.CacheRuleReads, func(l map[string]string, v float64) {
		r := byRule[l["rule"]]
		if r == nil {
			r = &RuleCount{Rule: l["rule"]}
			byRule[r.Rule] = r
		}
		switch l["result"] {
		case "hit":
			r.Hit = int64(v)
		case "joined":
			r.Joined = int64(v)
		case "miss":
			r.Miss = int64(v)
		}
	})
	for _, r := range byRule {
		s.Rules = append(s.Rules, *r)
	}
	slices.SortFunc(s.Rules, func(a, b RuleCount) int { return strings.Compare(a.Rule, b.Rule) })
	return s
}

// each calls f with the labels and value of every series c collects
// (counters and gauges).
func each(c prometheus.Collector, f func(labels map[string]string, v float64)) {
	ch := make(chan prometheus.Metric, 64)
	// Collect blocks on a full channel; this goroutine ends once every
	// series is read, before each returns.
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	for pm := range ch {
		var d dto.Metric
		if pm.Write(&d) != nil {
			continue
		}
		labels := make(map[string]string, len(d.Label))
		for _, lp := range d.Label {
			labels[lp.GetName()] = lp.GetValue()
		}
		switch {
		case d.Counter != nil:
			f(labels, d.Counter.GetValue())
		case d.Gauge != nil:
			f(labels, d.Gauge.GetValue())
		}
	}
}

// value returns a single counter's or gauge's value.
func value(c prometheus.Collector) float64 {
	var v float64
	each(c, func(_ map[string]string, x float64) { v = x })
	return v
}
