package metrics

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var testBounds = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .1, 1, 10}

// TestHistogramVecExportsWhatPrometheusWould: the same observations, edge
// values on the bounds included, give the same buckets, count and sum as
// prometheus.HistogramVec, label by label.
func TestHistogramVecExportsWhatPrometheusWould(t *testing.T) {
	ours := NewHistogramVec("h_seconds", "help", "route", testBounds)
	theirs := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "h_seconds", Help: "help", Buckets: testBounds}, []string{"route"})
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20_000 {
		label := []string{"upstream", "local", "cache"}[i%3]
		v := math.Exp(rng.Float64()*20 - 14) // 1e-6 s to 0.5e3 s
		if i%10 == 0 {
			v = testBounds[rng.IntN(len(testBounds))] // exactly on a bound: counted in it
		}
		ours.WithLabelValues(label).Observe(v)
		theirs.WithLabelValues(label).Observe(v)
	}
	got, want := gather(t, ours), gather(t, theirs)
	if len(got) != 3 || len(got) != len(want) {
		t.Fatalf("%d series, prometheus %d", len(got), len(want))
	}
	for label, w := range want {
		g := got[label]
		if g == nil {
			t.Fatalf("no series for %s", label)
		}
		if g.GetSampleCount() != w.GetSampleCount() || math.Abs(g.GetSampleSum()-w.GetSampleSum()) > 1e-6*w.GetSampleSum() {
			t.Errorf("%s: count %d sum %v, prometheus %d %v", label, g.GetSampleCount(), g.GetSampleSum(), w.GetSampleCount(), w.GetSampleSum())
		}
		for i, b := range w.GetBucket() {
			gb := g.GetBucket()[i]
			if gb.GetUpperBound() != b.GetUpperBound() || gb.GetCumulativeCount() != b.GetCumulativeCount() {
				t.Errorf("%s: bucket le=%v holds %d, prometheus le=%v %d", label, gb.GetUpperBound(), gb.GetCumulativeCount(), b.GetUpperBound(), b.GetCumulativeCount())
			}
		}
	}
}

// TestHistogramVecScrapedWhileObserved: scrapes during observations from
// many goroutines see buckets that only grow and a count equal to the
// last bucket's, and in the end every observation.
func TestHistogramVecScrapedWhileObserved(t *testing.T) {
	v := NewHistogramVec("h_seconds", "help", "route", testBounds)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := v.WithLabelValues("r")
			for i := range 5000 {
				h.Observe(float64(i%7+g) * 0.001)
			}
		}()
	}
	var last uint64
	for range 50 {
		s := gather(t, v)["r"]
		if s == nil {
			continue
		}
		buckets := s.GetBucket()
		if top := buckets[len(buckets)-1].GetCumulativeCount(); top > s.GetSampleCount() || s.GetSampleCount() < last {
			t.Fatalf("count %d, last bucket %d, earlier count %d", s.GetSampleCount(), top, last)
		}
		last = s.GetSampleCount()
	}
	wg.Wait()
	if got := gather(t, v)["r"].GetSampleCount(); got != 8*5000 {
		t.Fatalf("count %d, want %d", got, 8*5000)
	}
}

// gather registers c alone and returns its histograms by their one label.
func gather(t *testing.T, c prometheus.Collector) map[string]*dto.Histogram {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Histogram{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetHistogram()
		}
	}
	return out
}
