package savings

import (
	"time"

	"github.com/funnel-proxy/funnel/metrics"
)

// DaysPerMonth is the month the monthly estimates use.
const DaysPerMonth = 30

// Report is the JSON document served at /api/savings. Rates are per
// second; counts are since funnel started.
type Report struct {
	GeneratedAt     time.Time `json:"generated_at"`
	UptimeSeconds   float64   `json:"uptime_seconds"`
	IntervalSeconds float64   `json:"interval_seconds"` // between two points of Series
	Series          Series    `json:"series"`
	Window          Window    `json:"window"`
	// SavingRatio is 1 - upstream/client commands over the window, or
	// since start when the window saw no client command; null before any.
	SavingRatio *float64      `json:"saving_ratio"`
	Estimate    Estimate      `json:"estimate"`
	Totals      Totals        `json:"totals"`
	CacheRules  []CacheRule   `json:"cache_rules"`
	TopCommands []CommandCost `json:"top_commands"`
	Connections Connections   `json:"connections"`
}

// Series are commands per second in each interval, oldest first, for the
// chart.
type Series struct {
	Client   []float64 `json:"client"`
	Upstream []float64 `json:"upstream"`
}

// Window is the rates over the last minute (or less, just after start).
type Window struct {
	Seconds           float64 `json:"seconds"`
	ClientPerSecond   float64 `json:"client_per_second"`
	UpstreamPerSecond float64 `json:"upstream_per_second"`
	LocalPerSecond    float64 `json:"local_per_second"`
}

// Estimate extrapolates the window's rates to a day and a month of billed
// commands. Direct is what the clients would be billed without funnel:
// the commands they sent it (their handshakes included, since funnel
// counts those as client commands too). Funnel is what funnel sends
// upstream: the bill, its own logins and INFOs included.
type Estimate struct {
	Basis               string  `json:"basis"`
	PricePer100k        float64 `json:"price_per_100k"`
	DaysPerMonth        int     `json:"days_per_month"`
	DirectPerDay        float64 `json:"direct_per_day"`
	FunnelPerDay        float64 `json:"funnel_per_day"`
	DirectPerMonth      float64 `json:"direct_per_month"`
	FunnelPerMonth      float64 `json:"funnel_per_month"`
	DirectCostPerMonth  float64 `json:"direct_cost_per_month"`
	FunnelCostPerMonth  float64 `json:"funnel_cost_per_month"`
	SavedCostPerMonth   float64 `json:"saved_cost_per_month"`
	DirectCostPerDay    float64 `json:"direct_cost_per_day"`
	FunnelCostPerDay    float64 `json:"funnel_cost_per_day"`
	SavedCommandsPerDay float64 `json:"saved_commands_per_day"`
}

// Totals are counts since start.
type Totals struct {
	Client            int64 `json:"client_commands"`
	Upstream          int64 `json:"upstream_commands"`
	Local             int64 `json:"local_replies"`
	CacheHits         int64 `json:"cache_hits"`
	CacheJoined       int64 `json:"cache_joined"`
	CacheMisses       int64 `json:"cache_misses"`
	AbsorbedWrites    int64 `json:"absorbed_writes"`
	SharedWaitsJoined int64 `json:"shared_waits_joined"`
	ClientReadBytes   int64 `json:"client_read_bytes"`
	ClientWriteBytes  int64 `json:"client_written_bytes"`
	UpstreamReadBytes int64 `json:"upstream_read_bytes"`
	UpstreamWrBytes   int64 `json:"upstream_written_bytes"`
}

// CacheRule is one --cache rule's reads since start.
type CacheRule struct {
	Rule   string `json:"rule"`
	Hits   int64  `json:"hits"`
	Joined int64  `json:"joined"`
	Misses int64  `json:"misses"`
	// HitRate is (hits + joined) / all its reads: the share that did not go
	// upstream; null before any read.
	HitRate *float64 `json:"hit_rate"`
}

// CommandCost is one command's counts since start.
type CommandCost struct {
	Command  string `json:"command"`
	Upstream int64  `json:"upstream"`
	Client   int64  `json:"client"`
	Local    int64  `json:"local"`
	// Share is its part of all upstream commands (the bill).
	Share float64 `json:"share"`
}

// Connections are the connections open now.
type Connections struct {
	Clients int64            `json:"clients"`
	Lanes   map[string]int64 `json:"lanes"` // upstream connections by lane
}

// topCommands is how many commands the report lists.
const topCommands = 10

// window is how far back the rates of the estimate look.
const window = time.Minute

// buildReport puts together the report from the samples, oldest first,
// and a snapshot of the metrics taken now.
func buildReport(now, started time.Time, samples []sample, snap metrics.Snapshot, price float64, every time.Duration) Report {
	rep := Report{
		GeneratedAt:     now.UTC(),
		UptimeSeconds:   now.Sub(started).Seconds(),
		IntervalSeconds: every.Seconds(),
		Series:          Series{Client: []float64{}, Upstream: []float64{}},
		CacheRules:      []CacheRule{},
		TopCommands:     []CommandCost{},
		Connections:     Connections{Clients: snap.ClientConnections, Lanes: snap.Lanes},
		Totals: Totals{
			Client: snap.Client, Upstream: snap.Upstream, Local: snap.Local,
			CacheHits: snap.CacheHits, CacheJoined: snap.CacheJoins, CacheMisses: snap.CacheMisses,
			AbsorbedWrites: snap.Absorbed, SharedWaitsJoined: snap.SharedWaitJoins,
			ClientReadBytes: snap.ClientRead, ClientWriteBytes: snap.ClientWritten,
			UpstreamReadBytes: snap.UpstreamRead, UpstreamWrBytes: snap.UpstreamWritten,
		},
	}
	for i := 1; i < len(samples); i++ {
		a, b := samples[i-1], samples[i]
		dt := b.at.Sub(a.at).Seconds()
		if dt <= 0 {
			continue
		}
		rep.Series.Client = append(rep.Series.Client, float64(b.client-a.client)/dt)
		rep.Series.Upstream = append(rep.Series.Upstream, float64(b.upstream-a.upstream)/dt)
	}

	// The window runs from the oldest sample within it to now's counts.
	cur := sample{at: now, client: snap.Client, upstream: snap.Upstream, local: snap.Local}
	from := sample{at: started}
	for _, s := range samples {
		if now.Sub(s.at) <= window {
			from = s
			break
		}
	}
	if dt := cur.at.Sub(from.at).Seconds(); dt > 0 {
		rep.Window = Window{
			Seconds:           dt,
			ClientPerSecond:   float64(cur.client-from.client) / dt,
			UpstreamPerSecond: float64(cur.upstream-from.upstream) / dt,
			LocalPerSecond:    float64(cur.local-from.local) / dt,
		}
	}
	switch {
	case cur.client > from.client:
		rep.SavingRatio = ratio(1 - float64(cur.upstream-from.upstream)/float64(cur.client-from.client))
	case snap.Client > 0:
		rep.SavingRatio = ratio(1 - float64(snap.Upstream)/float64(snap.Client))
	}

	const day = 24 * 60 * 60
	e := Estimate{
		Basis:        "the last minute's rates, extrapolated",
		PricePer100k: price,
		DaysPerMonth: DaysPerMonth,
		DirectPerDay: rep.Window.ClientPerSecond * day,
		FunnelPerDay: rep.Window.UpstreamPerSecond * day,
	}
	if rep.Window.Seconds < window.Seconds()-1 {
		e.Basis = "the rates since start, extrapolated: funnel has run for less than a minute"
	}
	e.DirectPerMonth = e.DirectPerDay * DaysPerMonth
	e.FunnelPerMonth = e.FunnelPerDay * DaysPerMonth
	e.DirectCostPerDay = e.DirectPerDay / 100_000 * price
	e.FunnelCostPerDay = e.FunnelPerDay / 100_000 * price
	e.DirectCostPerMonth = e.DirectPerMonth / 100_000 * price
	e.FunnelCostPerMonth = e.FunnelPerMonth / 100_000 * price
	e.SavedCostPerMonth = e.DirectCostPerMonth - e.FunnelCostPerMonth
	e.SavedCommandsPerDay = e.DirectPerDay - e.FunnelPerDay
	rep.Estimate = e

	for _, r := range snap.Rules {
		cr := CacheRule{Rule: r.Rule, Hits: r.Hit, Joined: r.Joined, Misses: r.Miss}
		if all := r.Hit + r.Joined + r.Miss; all > 0 {
			cr.HitRate = ratio(float64(r.Hit+r.Joined) / float64(all))
		}
		rep.CacheRules = append(rep.CacheRules, cr)
	}
	for _, c := range snap.Commands {
		if len(rep.TopCommands) == topCommands || c.Upstream == 0 {
			break // sorted by upstream count, most first
		}
		rep.TopCommands = append(rep.TopCommands, CommandCost{
			Command: c.Command, Upstream: c.Upstream, Client: c.Client, Local: c.Local,
			Share: float64(c.Upstream) / float64(max(snap.Upstream, 1)),
		})
	}
	return rep
}

func ratio(v float64) *float64 { return &v }
