// Package savings serves the savings page on the metrics listener: one
// embedded HTML page at / and the JSON it polls at /api/savings, both read
// from funnel's metrics.
package savings

import (
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
)

// sample is the command totals at one moment.
type sample struct {
	at                      time.Time
	client, upstream, local int64
}

// sampler keeps the command totals once an interval in a ring, so that
// rates over the last minutes can be given without a time-series store.
//
// Rates are computed here, on the server, rather than in the page from the
// cumulative counters: a page just opened then shows the last minutes at
// once instead of an empty chart, every viewer sees the same figures, and
// the cost is one goroutine reading three atomics an interval.
type sampler struct {
	m     *metrics.Metrics
	every time.Duration

	mu   sync.Mutex
	ring []sample // len is the capacity; next is where the next sample goes
	next int
	n    int // samples held, up to len(ring)

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func newSampler(m *metrics.Metrics, every time.Duration, keep int) *sampler {
	return &sampler{m: m, every: every, ring: make([]sample, keep), stop: make(chan struct{}), done: make(chan struct{})}
}

// run takes a sample now and then once an interval until close.
func (s *sampler) run() {
	defer close(s.done)
	t := time.NewTicker(s.every)
	defer t.Stop()
	s.take(time.Now())
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.take(now)
		}
	}
}

func (s *sampler) take(now time.Time) {
	smp := sample{at: now, client: s.m.ClientTotal.Load(), upstream: s.m.UpstreamTotal.Load(), local: s.m.LocalTotal.Load()}
	s.mu.Lock()
	s.ring[s.next] = smp
	s.next = (s.next + 1) % len(s.ring)
	s.n = min(s.n+1, len(s.ring))
	s.mu.Unlock()
}

// samples returns the samples held, oldest first.
func (s *sampler) samples() []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]sample, 0, s.n)
	for i := range s.n {
		out = append(out, s.ring[(s.next-s.n+i+len(s.ring))%len(s.ring)])
	}
	return out
}

// close stops the sampling goroutine and waits for it. It is idempotent.
func (s *sampler) close() {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
}
