package proxy

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// output sends a session's replies in the order of its requests, whatever
// order they are answered in. It has no goroutine of its own: whoever
// completes a request (an upstream connection's reader, the session's
// dispatcher for a local reply, the pub/sub hub) moves every reply that is
// ready, in order, into the buffer and writes the buffer to the client
// without waiting. Handing each reply to another goroutine would cost a
// wake-up per request, which is most of a proxy's CPU time. When the
// client's socket would block, the output stalls: the loop watches the
// socket for room and writes the rest when it comes (writable), and a
// client that takes none for the write timeout is closed.
//
// Locking rule. qmu guards the queue and is never held across anything but
// a few pointer moves. mu guards the buffer and the socket's writes; nobody
// waits for the client while holding it. A goroutine that finds mu taken
// never waits for it: it sets dirty, and whoever holds mu looks again
// before it lets go. So no completer ever waits on a slow client.
type output struct {
	s *session

	qmu        sync.Mutex
	head, tail *request
	shut       bool         // no more queueing: what comes is dropped
	queued     atomic.Int32 // requests in the queue

	// dirty asks whoever holds mu to drain again before letting go, and
	// wantFlush to write what it drains (see kick).
	dirty, wantFlush atomic.Bool
	mu               sync.Mutex
	// buf holds replies, in order, not yet written to the client.
	buf []byte
	// off is how much of the head's large reply is written already.
	off int
	// stalled is set while the socket is full: only writable writes.
	stalled bool
	// progressAt is when the stalled socket last took bytes (unix nanos),
	// and stallTimer closes the client once it took none for the write
	// timeout.
	progressAt int64
	stallTimer *time.Timer
	// closeAfter, once set, closes the client after buf is written (QUIT,
	// a protocol error).
	closeAfter closeReason
	// closeWhenEmpty closes the client once every queued reply is written
	// (shutdown).
	closeWhenEmpty bool
}

const (
	// flushAt is the buffered size at which output writes before the batch
	// ends, so a long pipeline does not buffer all its replies.
	flushAt = 64 << 10
	// largeReply is the size from which a reply is written straight from
	// its request rather than copied into the buffer.
	largeReply = 256 << 10
	// outBufSize is the size of the pooled buffers replies are gathered
	// in once they outgrow a small one.
	outBufSize = 16 << 10
	// smallOutBuf is the largest buffer a client keeps once its replies
	// are written: enough for the small replies most clients get, which
	// then cost no allocation, while an idle client holds next to nothing.
	smallOutBuf = 512
)

func (o *output) init(s *session) { o.s = s }

// push queues r for its reply, after every request queued before it. Once
// the output is shut, r is dropped instead and push reports false.
func (o *output) push(r *request) bool {
	o.qmu.Lock()
	if o.shut {
		o.qmu.Unlock()
		r.release()
		return false
	}
	if o.tail == nil {
		o.head = r
	} else {
		o.tail.next = r
	}
	o.tail = r
	o.qmu.Unlock()
	o.queued.Add(1)
	return true
}

func (o *output) peek() *request {
	o.qmu.Lock()
	defer o.qmu.Unlock()
	return o.head
}

// takeReady returns the head if it is done, and nil if not. It takes it off
// the queue as well (popped), unless its reply is large: that one is written
// straight from the request, maybe over several drains, and popped after.
func (o *output) takeReady() (r *request, popped bool) {
	o.qmu.Lock()
	r = o.head
	if r == nil || r.state.Load() != done {
		o.qmu.Unlock()
		return nil, false
	}
	if r.err == nil && !r.suppress && len(r.replyBytes()) >= largeReply {
		o.qmu.Unlock()
		return r, false
	}
	o.popLocked(r)
	o.qmu.Unlock()
	return r, true
}

// pop takes r, the head, off the queue.
func (o *output) pop(r *request) {
	o.qmu.Lock()
	o.popLocked(r)
	o.qmu.Unlock()
}

func (o *output) popLocked(r *request) {
	o.head = r.next
	if o.head == nil {
		o.tail = nil
	}
	r.next = nil
	o.queued.Add(-1)
}

// ready is called after a request completed: it sends what is ready now,
// or, with a batch, leaves that to the batch's flush, so the replies one
// upstream read brings a client cost one drain and one write.
//
// While the session's reader is in a batch (see session.batching), nothing
// is written: the reader writes once at the batch's end.
func (o *output) ready(batch *pool.Batch) {
	if batch == nil {
		o.kick(!o.s.batching.Load())
		return
	}
	batch.Add(o)
}

// Flush implements pool.Flusher: it writes what batched completions left in
// the buffer (unless the reader is in a batch, see ready).
func (o *output) Flush() { o.kick(!o.s.batching.Load()) }

var _ pool.Flusher = (*output)(nil)

// kick drains ready replies, and writes them if flush, when mu is free;
// otherwise it leaves both to whoever holds mu (see the locking rule). The
// wish to write is set before dirty, so the holder, looking again because
// of dirty, sees it: no write asked for is ever lost.
func (o *output) kick(flush bool) {
	if flush {
		o.wantFlush.Store(true)
	}
	o.dirty.Store(true)
	for o.dirty.Load() {
		if !o.mu.TryLock() {
			return
		}
		o.dirty.Store(false)
		o.drainLocked(o.wantFlush.Swap(false))
		o.mu.Unlock()
	}
}

// drainLocked appends every ready reply, in request order, to the buffer,
// and writes the buffer when flush is set or it is large. A stalled output
// drains only when the socket has room (writable).
func (o *output) drainLocked(flush bool) {
	if o.s.isDead() || o.stalled {
		return
	}
	var now time.Time // one clock read for the replies sent together
	for o.closeAfter == notClosed {
		r, popped := o.takeReady()
		if r == nil {
			break
		}
		if now.IsZero() {
			now = time.Now()
		}
		var undelivered []byte // a reply that must reach the client or go back
		if r.err == nil && !r.suppress {
			if r.undelivered != nil {
				undelivered = bytes.Clone(r.replyBytes())
			}
			if b := r.replyBytes(); !popped {
				if !o.flushLocked() || o.stalled || !o.writeLarge(b) {
					return
				}
			} else {
				o.room(len(b))
				o.buf = append(o.buf, b...)
			}
		} else if r.err != nil && !r.suppress {
			o.buf = resp.AppendError(o.buf, "ERR "+r.err.Error())
		}
		drop := r.undelivered
		if !popped {
			o.pop(r)
		}
		o.off = 0
		o.closeAfter = r.closeAfter
		o.s.replySent(r, now)
		if undelivered != nil {
			// Write it now. Written (to the socket's buffer), it is the
			// client's, as in Redis; if the client is gone first, the
			// element goes back. A partial write leaves the rest for
			// when the socket has room, like any reply.
			if !o.flushLocked() && len(o.buf) > 0 {
				drop(undelivered)
				return
			}
		}
		if len(o.buf) >= flushAt && (!o.flushLocked() || o.stalled) {
			return
		}
	}
	if flush || o.closeAfter != notClosed || o.closeWhenEmpty {
		o.flushLocked()
	}
}

// outBufs recycles the buffers of clients whose replies are written.
var outBufs = sync.Pool{New: func() any { return new([outBufSize]byte) }}

// room makes room in the buffer for n more bytes. Up to smallOutBuf the
// buffer grows as append grows it, and is kept; past that it moves into a
// pooled buffer, given back once written (releaseBuf); a batch larger
// still grows as append grows it, and is dropped once written.
func (o *output) room(n int) {
	need := len(o.buf) + n
	if need <= cap(o.buf) || need <= smallOutBuf || need > outBufSize || cap(o.buf) >= outBufSize {
		return
	}
	nb := outBufs.Get().(*[outBufSize]byte)[:len(o.buf)]
	copy(nb, o.buf)
	o.buf = nb
}

// releaseBuf gives back the emptied buffer: a client keeps at most a small
// one while it waits for its next command.
func (o *output) releaseBuf() {
	switch c := cap(o.buf); {
	case c == outBufSize:
		outBufs.Put((*[outBufSize]byte)(o.buf[:outBufSize]))
		o.buf = nil
	case c > smallOutBuf:
		o.buf = nil
	}
}

// writeLarge writes what the socket takes now of a large reply, straight
// from its request, without copying it. It reports whether all of it is
// written.
func (o *output) writeLarge(b []byte) bool {
	n, err := o.writeNow(b[o.off:])
	if err != nil {
		o.writeFailed(err)
		return false
	}
	if o.off += n; o.off < len(b) {
		o.stall()
		return false
	}
	return true
}

// flushLocked writes what the socket takes now of the buffer, leaving the
// rest for when it has room. It reports false when the session died.
func (o *output) flushLocked() bool {
	if len(o.buf) > 0 {
		n, err := o.writeNow(o.buf)
		if err != nil {
			o.writeFailed(err)
			return false
		}
		o.buf = o.buf[:copy(o.buf, o.buf[n:])]
		if len(o.buf) > 0 {
			o.stall()
			return true
		}
		o.releaseBuf()
	}
	switch {
	case o.closeAfter != notClosed:
		o.s.kill(o.closeAfter)
		return false
	case o.closeWhenEmpty && o.peek() == nil:
		o.s.kill(closedShutdown)
		return false
	}
	return true
}

// stall leaves writing to the loop, which reports when the socket has room.
func (o *output) stall() {
	o.stalled = true
	o.s.sock.setWriting(true)
	o.progressAt = time.Now().UnixNano()
	timeout := o.s.srv.live().writeTimeout
	if o.stallTimer == nil {
		o.stallTimer = time.AfterFunc(timeout, o.checkStall)
	} else {
		o.stallTimer.Reset(timeout)
	}
}

// checkStall closes a client whose socket took nothing for the write
// timeout (the one in force now: a reload applies to the next check).
func (o *output) checkStall() {
	o.mu.Lock()
	idle := time.Duration(time.Now().UnixNano() - o.progressAt)
	timeout := o.s.srv.live().writeTimeout
	stalled := o.stalled
	if stalled && idle < timeout {
		o.stallTimer.Reset(timeout - idle)
	}
	o.mu.Unlock()
	if stalled && idle >= timeout {
		o.s.kill(closedWriteTimeout)
	}
}

// writable is the loop's report that a stalled socket has room (or an
// error): it writes what waits, and goes on until it stalls again or has
// caught up.
func (o *output) writable() {
	o.mu.Lock()
	if !o.stalled {
		o.mu.Unlock()
		return
	}
	o.stalled = false
	o.progressAt = time.Now().UnixNano()
	o.dirty.Store(false)
	o.wantFlush.Store(false)
	o.drainLocked(true)
	if !o.stalled {
		o.s.sock.setWriting(false)
		o.stallTimer.Stop()
	}
	o.mu.Unlock()
	o.kick(true) // what came while the lock was held
}

// writeNow writes as much of b as the socket takes without waiting.
func (o *output) writeNow(b []byte) (int, error) {
	n, err := o.s.sock.write(b)
	if n > 0 {
		o.s.srv.metrics.ClientWritten.Add(int64(n))
	}
	return n, err
}

func (o *output) writeFailed(error) { o.s.kill(closedWriteError) }

// pushDirect puts a message for a RESP3 client straight into its output,
// ahead of replies still awaited: RESP3 pushes may come between any two
// replies, so a client blocked in BLPOP still gets its messages. It does not
// when that could put the message before its subscription's confirmation or
// an earlier message still in line, or while the client is not reading.
func (o *output) pushDirect(raw []byte, batch *pool.Batch) bool {
	if !o.mu.TryLock() {
		return false
	}
	defer o.mu.Unlock()
	s := o.s
	if o.stalled || o.off > 0 || o.closeAfter != notClosed || s.isDead() || s.unconfirmedSubs.Load() > 0 || s.queuedPushes.Load() > 0 {
		return false
	}
	// The buffer holds whole replies only, so the push lands between two.
	n := len(o.buf)
	o.room(len(raw))
	o.buf = append(o.buf, raw...)
	resp.AsPush(o.buf[n:])
	batch.Add(o)
	return true
}

// drainThenClose makes the output close the client once every reply
// queued is written (shutdown).
func (o *output) drainThenClose() {
	o.mu.Lock()
	o.closeWhenEmpty = true
	o.mu.Unlock()
	o.kick(true)
}

// shutQueue ends the queue once the session is dead: requests already done
// are recycled now, the others by whoever completes them (see finish). It
// takes mu, so no drain is under way.
func (o *output) shutQueue() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stallTimer != nil {
		o.stallTimer.Stop()
	}
	o.buf = o.buf[:0]
	o.releaseBuf()
	o.qmu.Lock()
	o.shut = true
	r := o.head
	o.head, o.tail = nil, nil
	o.qmu.Unlock()
	for r != nil {
		next := r.next
		r.next = nil
		o.queued.Add(-1)
		if !r.state.CompareAndSwap(pending, orphaned) {
			r.dropped() // done, never written
			r.release()
		}
		r = next
	}
}
