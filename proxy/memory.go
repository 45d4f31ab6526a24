package proxy

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/resp"
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
	// reserved is the bytes of replies still to come, as each request sent
	// upstream reserves its client's average reply size (see admitted).
	reserved atomic.Int64
	waiting  atomic.Int32

	mu    sync.Mutex
	freed chan struct{} // closed when usage drops under the limit while someone waits
}

// memoryWait is how long a reader waits for memory before it gives up.
const memoryWait = 10 * time.Second

var errMemory = errors.New("funnel: memory limit reached (--max-memory) while waiting to read this client's commands; retry later")

// errMemoryFull tells the loop to pause a client's reading until memory is
// freed (session.awaitMemory).
var errMemoryFull = errors.New("funnel: at the memory limit")

func newMemoryBudget(limit int64, m *metrics.Metrics) *memoryBudget {
	return &memoryBudget{limit: limit, used: &m.Buffered, metrics: m, freed: make(chan struct{})}
}

// add records n more bytes held (fewer, for n < 0).
func (b *memoryBudget) add(n int64) {
	if used := b.used.Add(n); n < 0 && used <= b.limit {
		b.wake()
	}
}

// reserve records n more bytes of replies still to come (fewer, for n < 0).
func (b *memoryBudget) reserve(n int64) {
	if b.reserved.Add(n); n < 0 {
		b.wake()
	}
}

// full reports whether what is held is over the limit.
func (b *memoryBudget) full() bool { return b.used.Load() > b.limit }

// roomFor reports whether n more bytes fit with what is held and reserved.
func (b *memoryBudget) roomFor(n int64) bool {
	return b.used.Load()+b.reserved.Load()+n <= b.limit
}

// wake tells the waiters that memory was freed.
func (b *memoryBudget) wake() {
	if b.waiting.Load() == 0 {
		return
	}
	b.mu.Lock()
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
}

// freedChan returns a channel closed the next time memory is freed; the
// caller counts as waiting until it calls done.
func (b *memoryBudget) freedChan() (ch <-chan struct{}, done func()) {
	b.waiting.Add(1)
	b.mu.Lock()
	ch = b.freed
	b.mu.Unlock()
	return ch, func() { b.waiting.Add(-1) }
}

// wait returns once usage is under the limit, or errMemory after memoryWait,
// or nil at once when dead closes.
func (b *memoryBudget) wait(dead <-chan struct{}) error {
	if !b.full() {
		return nil
	}
	b.metrics.MemoryWaits.Inc()
	timer := time.NewTimer(memoryWait)
	defer timer.Stop()
	for {
		freed, done := b.freedChan()
		if !b.full() {
			done()
			return nil
		}
		select {
		case <-freed:
			done()
		case <-dead:
			done()
			return nil
		case <-timer.C:
			done()
			return errMemory
		}
	}
}

// readerBudget is a session's reader's view of the budget (resp.Budget).
type readerBudget struct{ s *session }

func (rb readerBudget) Add(n int64) { rb.s.srv.mem.add(n) }

// Wait holds back a reader while funnel is at its memory limit (it returns
// errMemoryFull, and the loop pauses the client), unless its
// client holds almost nothing: replies held and expected under lightClient,
// and no partial request beyond the reader's first buffer. Reading such a
// client costs one small buffer, so the clients that hold the memory are
// the ones that wait, and a light client (a health check, a canary) is
// still served.
func (rb readerBudget) Wait() error {
	s := rb.s
	if !s.srv.mem.full() ||
		s.pendingOut.Load()+s.upInFlight.Load()*s.avgReply.Load() < lightClient && s.reader.Size() <= resp.InitialBuffer {
		return nil
	}
	return errMemoryFull
}

// lightClient is how many reply bytes, held and expected, a client may have
// and still be read while funnel is at its memory limit.
const lightClient = 64 << 10
