package savings

import (
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestReportRates checks the arithmetic on a known history: the series
// are per-interval rates, the window starts at the oldest sample within a
// minute, and the estimate is those rates times a day, a month and the
// price.
func TestReportRates(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var samples []sample
	for i := range 120 { // two minutes: 100 client and 10 upstream commands a second
		samples = append(samples, sample{at: t0.Add(time.Duration(i) * time.Second), client: int64(100 * i), upstream: int64(10 * i)})
	}
	now := t0.Add(120 * time.Second)
	snap := metrics.Snapshot{
		Client: 12000, Upstream: 1200,
		Commands: []metrics.CommandCount{{Command: "get", Client: 11000, Upstream: 900}, {Command: "set", Client: 1000, Upstream: 300}, {Command: "ping", Client: 5}},
		Rules:    []metrics.RuleCount{{Rule: "c:*", Hit: 3, Joined: 1, Miss: 4}, {Rule: "idle:*"}},
	}
	rep := buildReport(now, t0, samples, snap, 0.2, time.Second)
	if len(rep.Series.Client) != 119 || rep.Series.Client[0] != 100 || rep.Series.Upstream[118] != 10 {
		t.Errorf("series: %d points, first %v", len(rep.Series.Client), rep.Series.Client[:1])
	}
	if rep.Window.Seconds != 60 || rep.Window.ClientPerSecond != 100 || rep.Window.UpstreamPerSecond != 10 {
		t.Errorf("window %+v, want 60 s at 100 and 10 per second", rep.Window)
	}
	if rep.SavingRatio == nil || *rep.SavingRatio != 0.9 {
		t.Errorf("saving ratio %v, want 0.9", rep.SavingRatio)
	}
	e := rep.Estimate
	if e.DirectPerDay != 8_640_000 || e.FunnelPerDay != 864_000 || e.DirectPerMonth != 259_200_000 ||
		e.DirectCostPerMonth != 518.4 || e.FunnelCostPerMonth < 51.839 || e.FunnelCostPerMonth > 51.841 {
		t.Errorf("estimate %+v", e)
	}
	if len(rep.TopCommands) != 2 || rep.TopCommands[0].Command != "get" || rep.TopCommands[0].Share != 0.75 {
		t.Errorf("top commands %+v, want get then set, ping (never upstream) left out", rep.TopCommands)
	}
	if len(rep.CacheRules) != 2 || *rep.CacheRules[0].HitRate != 0.5 || rep.CacheRules[1].HitRate != nil {
		t.Errorf("cache rules %+v", rep.CacheRules)
	}

	// Just started, no sample yet: rates since start, no ratio before any
	// command.
	rep = buildReport(t0.Add(2*time.Second), t0, nil, metrics.Snapshot{}, 0.2, time.Second)
	if rep.SavingRatio != nil || rep.Window.Seconds != 2 || len(rep.Series.Client) != 0 {
		t.Errorf("fresh report: %+v", rep)
	}
}

// TestSamplerRing checks that the ring keeps the newest samples in order
// and that Close stops its goroutine (goleak checks).
func TestSamplerRing(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry())
	p := New(m, Options{Interval: 5 * time.Millisecond, Keep: 4})
	deadline := time.Now().Add(5 * time.Second)
	for len(p.sampler.samples()) < 4 && time.Now().Before(deadline) {
		m.ClientTotal.Add(1)
		time.Sleep(5 * time.Millisecond)
	}
	got := p.sampler.samples()
	if len(got) != 4 {
		t.Fatalf("%d samples, want the ring's 4", len(got))
	}
	for i := 1; i < len(got); i++ {
		if !got[i].at.After(got[i-1].at) || got[i].client < got[i-1].client {
			t.Errorf("samples out of order: %+v", got)
		}
	}
	p.Close()
	p.Close()
}
