package proxy

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// output sends a session's replies in the order of its requests, whatever
// order they are answered in. It has no goroutine of its own in the common
// case: whoever completes a request (an upstream connection's reader, the
// session's dispatcher for a local reply, the pub/sub hub) moves every reply
// that is ready, in order, into the buffer and writes the buffer to the
// client without waiting. Handing each reply to another goroutine would
// cost a wake-up per request, which is most of a proxy's CPU time. Only
// when the client's socket would block does a writer goroutine start: it
// waits for the client, and ends once it has caught up.
//
// Locking rule. qmu guards the queue and is never held across anything but
// a few pointer moves. mu guards the buffer and the socket. Any goroutine
// may take mu to move ready replies into the buffer and write them without
// waiting; only the writer goroutine may block while holding mu, in a write
// bounded by the client write timeout. A goroutine that finds mu taken never
// waits for it: it sets dirty, and whoever holds mu looks again before it
// lets go. So no completer ever waits on a slow client.
type output struct {
	s    *session
	conn net.Conn
	// raw writes to the socket without waiting; nil when the connection
	// offers no raw access (then every write goes through the writer
	// goroutine).
	raw syscall.RawConn
	// rawWrite is tryWrite as a func value, made once: handing raw.Write a
	// fresh closure would allocate on every write.
	rawWrite func(fd uintptr) bool

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
	// stalled is set while the writer goroutine owns writing: the socket
	// would have blocked.
	stalled bool
	// writer is set while the writer goroutine runs (changed under mu,
	// read anywhere).
	writer atomic.Bool
	// closeAfter, once set, closes the client after buf is written (QUIT,
	// a protocol error).
	closeAfter closeReason
	// closeWhenEmpty closes the client once every queued reply is written
	// (shutdown).
	closeWhenEmpty bool
	// pending, written and writeErr are tryWrite's arguments and results.
	pending  []byte
	written  int
	writeErr error
}

const (
	// flushAt is the buffered size at which output writes before the batch
	// ends, so a long pipeline does not buffer all its replies.
	flushAt = 64 << 10
	// largeReply is the size from which a reply is written straight from
	// its request rather than copied into the buffer.
	largeReply = 256 << 10
	// maxKeptOutBuf is the largest buffer kept once empty: enough for the
	// small replies most clients get, without holding a burst's worth of
	// memory for each of thousands of idle clients.
	maxKeptOutBuf = 16 << 10
)

func (o *output) init(s *session, conn net.Conn) {
	o.s, o.conn = s, conn
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			o.raw = raw
			o.rawWrite = o.tryWrite
		}
	}
}

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

// pop takes r, the head, off the queue.
func (o *output) pop(r *request) {
	o.qmu.Lock()
	o.head = r.next
	if o.head == nil {
		o.tail = nil
	}
	o.qmu.Unlock()
	r.next = nil
	o.queued.Add(-1)
}

// ready is called after a request completed: it sends what is ready now,
// or, with a batch, moves it to the buffer and leaves the write to the
// batch's flush.
//
// While the session's reader is in a batch (see session.batching), nothing
// is written: the reader writes once at the batch's end.
func (o *output) ready(batch *pool.Batch) {
	if batch == nil {
		o.kick(!o.s.batching.Load())
		return
	}
	o.kick(false)
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
		o.drainLocked(o.wantFlush.Swap(false), false)
		o.mu.Unlock()
	}
}

// drainLocked appends every ready reply, in request order, to the buffer,
// and writes the buffer when flush is set or it is large. inWriter says the
// writer goroutine calls: it may block on the client; any other caller
// leaves that to the writer goroutine.
func (o *output) drainLocked(flush, inWriter bool) {
	if o.s.isDead() || (o.stalled && !inWriter) {
		return
	}
	for o.closeAfter == notClosed {
		r := o.peek()
		if r == nil || r.state.Load() != done {
			break
		}
		var undelivered []byte // a reply that must reach the client or go back
		if r.err == nil && !r.suppress {
			if r.undelivered != nil {
				undelivered = bytes.Clone(r.replyBytes())
			}
			if b := r.replyBytes(); len(b) >= largeReply {
				if !o.flushLocked(inWriter) || o.stalled && !inWriter {
					return
				}
				if !o.writeLarge(b, inWriter) {
					return
				}
			} else {
				o.buf = append(o.buf, b...)
			}
		} else if r.err != nil && !r.suppress {
			o.buf = resp.AppendError(o.buf, "ERR "+r.err.Error())
		}
		drop := r.undelivered
		o.pop(r)
		o.off = 0
		o.closeAfter = r.closeAfter
		o.s.replySent(r)
		if undelivered != nil {
			// Write it now. Written (to the socket's buffer), it is the
			// client's, as in Redis; if the client is gone first, the
			// element goes back. A partial write leaves the rest to the
			// writer goroutine, like any reply.
			if !o.flushLocked(inWriter) && len(o.buf) > 0 {
				drop(undelivered)
				return
			}
		}
		if len(o.buf) >= flushAt && (!o.flushLocked(inWriter) || o.stalled && !inWriter) {
			return
		}
	}
	if flush || o.closeAfter != notClosed || o.closeWhenEmpty {
		o.flushLocked(inWriter)
	}
}

// writeLarge writes a large reply straight from its request, after what is
// buffered, without copying it: all of it in the writer goroutine, else
// what the socket takes now. It reports whether all of it is written.
func (o *output) writeLarge(b []byte, inWriter bool) bool {
	if inWriter {
		if !o.writeBlocking(b[o.off:]) {
			return false
		}
		return true
	}
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

// flushLocked writes the buffer: all of it, waiting, in the writer
// goroutine; elsewhere what the socket takes now, leaving the rest to the
// writer goroutine. It reports false when the session died.
func (o *output) flushLocked(inWriter bool) bool {
	if len(o.buf) > 0 {
		if inWriter {
			if !o.writeBlocking(o.buf) {
				return false
			}
			o.buf = o.buf[:0]
		} else {
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
		}
		if cap(o.buf) > maxKeptOutBuf {
			o.buf = nil
		}
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

// stall hands writing to the writer goroutine, starting it if need be.
func (o *output) stall() {
	o.stalled = true
	if o.writer.Load() {
		return
	}
	o.writer.Store(true)
	o.s.srv.wg.Add(1)
	go o.writeLoop()
}

// writeLoop is the writer goroutine: it writes, waiting for the client,
// until it has caught up with every ready reply, then ends.
func (o *output) writeLoop() {
	defer o.s.srv.wg.Done()
	defer o.s.srv.recoverPanic(o.s)
	o.mu.Lock()
	for !o.s.isDead() {
		o.dirty.Store(false)
		o.wantFlush.Store(false)
		o.drainLocked(true, true)
		if len(o.buf) == 0 && o.off == 0 && !o.dirty.Load() {
			break
		}
	}
	o.stalled = false
	o.writer.Store(false)
	o.mu.Unlock()
	o.kick(true) // what came while the lock was held
}

// writeBlocking writes b, waiting for the client up to ClientWriteTimeout
// (the one in force now: a reload applies to the next write).
// The deadline is cleared afterwards: the non-blocking writes that follow
// would otherwise fail once it passed.
func (o *output) writeBlocking(b []byte) bool {
	_ = o.conn.SetWriteDeadline(time.Now().Add(o.s.srv.live().writeTimeout))
	n, err := o.conn.Write(b)
	o.s.srv.metrics.ClientWritten.Add(int64(n))
	_ = o.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		o.writeFailed(err)
		return false
	}
	return true
}

// writeNow writes as much of b as the socket takes without waiting.
func (o *output) writeNow(b []byte) (int, error) {
	if o.raw == nil {
		return 0, nil
	}
	o.pending, o.written, o.writeErr = b, 0, nil
	err := o.raw.Write(o.rawWrite)
	n := o.written
	if n > 0 {
		o.s.srv.metrics.ClientWritten.Add(int64(n))
	}
	if err == nil {
		err = o.writeErr
	}
	o.pending, o.writeErr = nil, nil
	return n, err
}

// tryWrite writes o.pending to fd until the socket is full; it always
// reports done, so the runtime never waits for the socket here.
func (o *output) tryWrite(fd uintptr) bool {
	b := o.pending
	for o.written < len(b) {
		m, e := syscall.Write(int(fd), b[o.written:])
		if m > 0 {
			o.written += m
		}
		if e == syscall.EINTR || e == nil && m > 0 {
			continue
		}
		if e != nil && e != syscall.EAGAIN {
			o.writeErr = e
		}
		break // full (EAGAIN), failed, or wrote nothing
	}
	return true
}

func (o *output) writeFailed(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		o.s.kill(closedWriteTimeout)
		return
	}
	o.s.kill(closedWriteError)
}

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
// takes mu, so no drain is under way; a writer goroutine blocked in a write
// lets go at once, since the socket is closed.
func (o *output) shutQueue() {
	o.mu.Lock()
	defer o.mu.Unlock()
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
