package proxy

import (
	"container/list"
	"errors"
	"math"
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

	mu sync.Mutex
	// admissions holds the clients whose next request waits for room, in
	// the order they came (see awaitRoom).
	admissions list.List // of *roomWaiter
	// smallestNeed is at most the least need in admissions (less once the
	// waiter that had it left): a wake with less room than that lets no
	// one in, and does not look through the line.
	smallestNeed int64
	// paused holds the clients whose reading waits for memory, each with
	// the timer that ends its wait after memoryWait (pauseReading).
	paused map[*session]*time.Timer
}

// memoryWait is how long a reader waits for memory before it gives up.
const memoryWait = 10 * time.Second

var errMemory = errors.New("funnel: memory limit reached (--max-memory) while waiting to read this client's commands; retry later")

// errMemoryFull tells the loop to pause a client's reading until memory is
// freed (pauseReading).
var errMemoryFull = errors.New("funnel: at the memory limit")

func newMemoryBudget(limit int64, m *metrics.Metrics) *memoryBudget {
	return &memoryBudget{limit: limit, used: &m.Buffered, metrics: m, paused: map[*session]*time.Timer{}}
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

// wake lets in the clients waiting for room that the room now left fits,
// in the order they came (each needs its client's average reply size), and
// resumes the paused readings once usage is under the limit. One that needs
// more than is left does not hold up those behind it that fit: a client
// with huge replies waits for the room it needs, not everyone with it.
// Waking only those that fit keeps a burst of frees from waking every
// waiter for each of them.
func (b *memoryBudget) wake() {
	if b.waiting.Load() == 0 {
		return
	}
	var resumed []*session
	b.mu.Lock()
	if left := b.limit - b.used.Load() - b.reserved.Load(); b.admissions.Len() > 0 && left >= b.smallestNeed {
		smallest := int64(math.MaxInt64)
		for e := b.admissions.Front(); e != nil; {
			w := e.Value.(*roomWaiter)
			e = e.Next()
			if w.need > left {
				smallest = min(smallest, w.need)
				continue
			}
			left -= w.need
			b.dequeue(w)
			w.roomMade <- struct{}{}
		}
		b.smallestNeed = smallest
	}
	if len(b.paused) > 0 && !b.full() {
		for s, t := range b.paused {
			t.Stop()
			resumed = append(resumed, s)
		}
		clear(b.paused)
		b.waiting.Add(-int32(len(resumed)))
	}
	b.mu.Unlock()
	for _, s := range resumed {
		s.sock.loop.post(loopTask{kind: resumeClient, s: s})
	}
}

// roomWaiter is a client's place in the line for room (see awaitRoom).
type roomWaiter struct {
	need     int64
	roomMade chan struct{} // gets a token when wake lets the client in
	elem     *list.Element // its place in admissions; nil once out of it
}

// awaitRoom puts a client that needs need bytes of room in the line for
// it: at the back, or at the front for one that was let in and found the
// room taken again. roomMade gets a token when the client may try again.
// The caller calls leave when done waiting, with used set if it takes the
// room (it reserves it next). Otherwise leaving passes on any room it was
// let in for (it was woken by something else as well, or is gone), so no
// one waits for a free that already came.
func (b *memoryBudget) awaitRoom(need int64, front bool) (roomMade <-chan struct{}, leave func(used bool)) {
	w := &roomWaiter{need: need, roomMade: make(chan struct{}, 1)}
	b.waiting.Add(1)
	b.mu.Lock()
	if b.admissions.Len() == 0 || need < b.smallestNeed {
		b.smallestNeed = need
	}
	if front {
		w.elem = b.admissions.PushFront(w)
	} else {
		w.elem = b.admissions.PushBack(w)
	}
	b.mu.Unlock()
	if b.roomFor(need) { // freed before it was in line: nothing would wake it
		b.wake()
	}
	return w.roomMade, func(used bool) {
		b.mu.Lock()
		inLine := w.elem != nil
		if inLine {
			b.dequeue(w)
		}
		b.mu.Unlock()
		if !inLine && !used { // let in, and not taking the room
			b.wake()
		}
	}
}

// dequeue takes w out of the line; mu must be held.
func (b *memoryBudget) dequeue(w *roomWaiter) {
	b.admissions.Remove(w.elem)
	w.elem = nil
	b.waiting.Add(-1)
}

// pauseReading leaves s's reading paused until memory is freed (wake) or
// memoryWait has passed (errMemory); either posts its resume to the loop,
// so no goroutine waits for it.
func (b *memoryBudget) pauseReading(s *session) {
	b.metrics.MemoryWaits.Inc()
	b.waiting.Add(1)
	b.mu.Lock()
	b.paused[s] = time.AfterFunc(memoryWait, func() { b.resumeReading(s, errMemory) })
	b.mu.Unlock()
	if !b.full() { // freed before s was listed: nothing would wake it
		b.resumeReading(s, nil)
	}
}

// resumeReading takes s off the paused list and posts its resume, with
// err as why the wait ended; only the first caller for a pause does.
func (b *memoryBudget) resumeReading(s *session, err error) {
	if b.forget(s) {
		s.sock.loop.post(loopTask{kind: resumeClient, s: s, err: err})
	}
}

// forget takes s off the paused list (its session ended) and reports
// whether it was there.
func (b *memoryBudget) forget(s *session) bool {
	b.mu.Lock()
	t, ok := b.paused[s]
	delete(b.paused, s)
	b.mu.Unlock()
	if ok {
		t.Stop()
		b.waiting.Add(-1)
	}
	return ok
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
