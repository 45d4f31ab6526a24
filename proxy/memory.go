package proxy

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
)

// memoryBudget bounds the bytes funnel holds for all clients together:
// request bytes read and not yet answered, and reply bytes not yet written.
// Holding never waits, so no reply is ever held up; reading does: past the
// limit, every client's reader stops reading (backpressure) until enough is
// written out or dropped, and a reader that waits longer than memoryWait
// closes its client with an error, so nothing waits for ever.
type memoryBudget struct {
	limit   int64
	used    *atomic.Int64 // metrics.Buffered, exported as funnel_buffered_bytes
	metrics *metrics.Metrics
	waiting atomic.Int32

	mu    sync.Mutex
	freed chan struct{} // closed when usage drops under the limit while someone waits
}

// memoryWait is how long a reader waits for memory before it gives up.
const memoryWait = 10 * time.Second

var errMemory = errors.New("funnel: memory limit reached (--max-memory) while waiting to read this client's commands; retry later")

func newMemoryBudget(limit int64, m *metrics.Metrics) *memoryBudget {
	return &memoryBudget{limit: limit, used: &m.Buffered, metrics: m, freed: make(chan struct{})}
}

// add records n more bytes held (fewer, for n < 0).
func (b *memoryBudget) add(n int64) {
	used := b.used.Add(n)
	if n < 0 && used <= b.limit && b.waiting.Load() > 0 {
		b.mu.Lock()
		close(b.freed)
		b.freed = make(chan struct{})
		b.mu.Unlock()
	}
}

// wait returns once usage is under the limit, or errMemory after memoryWait,
// or nil at once when dead closes.
func (b *memoryBudget) wait(dead <-chan struct{}) error {
	if b.used.Load() <= b.limit {
		return nil
	}
	b.metrics.MemoryWaits.Inc()
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	timer := time.NewTimer(memoryWait)
	defer timer.Stop()
	for {
		b.mu.Lock()
		freed := b.freed
		b.mu.Unlock()
		if b.used.Load() <= b.limit {
			return nil
		}
		select {
		case <-freed:
		case <-dead:
			return nil
		case <-timer.C:
			return errMemory
		}
	}
}

// readerBudget is a session's reader's view of the budget (resp.Budget).
type readerBudget struct{ s *session }

func (rb readerBudget) Add(n int64) { rb.s.srv.mem.add(n) }
func (rb readerBudget) Wait() error { return rb.s.srv.mem.wait(rb.s.dead) }
