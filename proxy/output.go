package proxy

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/tidwall/redcon"
)

// output sends a session's replies in the order of its requests. It has no
// goroutine of its own in the common case: whoever completes a request (an
// upstream connection's reader, the session's reader for a local reply, the
// pub/sub hub) takes the lock if it is free, moves every reply that is ready,
// in order, into the buffer and writes the buffer to the client without
// waiting. Handing each reply to another goroutine would cost a wake-up per
// request, which is most of a proxy's CPU time. Only when the client's
// socket would block does the session's writer goroutine take over: it
// waits for the client, and the others stop writing until it has caught up.
type output struct {
	mu sync.Mutex
	// buf holds replies, in order, not yet written to the client.
	buf []byte
	// head is the next request in order, taken from the queue but not
	// complete yet.
	head *request
	// stalled is set while the writer goroutine owns the output: the socket
	// would have blocked, or a large reply is to be written.
	stalled bool
	// closed is set once the queue was closed and seen empty.
	closed bool
	// closeReason, once set, closes the client after buf is written (QUIT,
	// a protocol error).
	closeReason string
	// raw writes to the socket without waiting; nil when the connection
	// offers no raw access (then the writer goroutine writes everything).
	raw syscall.RawConn
	// rawWrite is tryWrite as a func value, made once: handing raw.Write a
	// fresh closure would allocate on every write.
	rawWrite func(fd uintptr) bool
	// pending, written and writeErr are tryWrite's arguments and results.
	pending  []byte
	written  int
	writeErr error
}

const (
	// flushAt is the buffered size at which output writes before the batch
	// ends, so a long pipeline does not buffer all its replies.
	flushAt = 64 << 10
	// largeReply is the size from which the writer goroutine writes a reply
	// straight from the request rather than copying it into the buffer.
	largeReply = 256 << 10
	// maxKeptOutBuf is the largest buffer kept once empty: enough for the
	// small replies most clients get, without holding a burst's worth of
	// memory for each of thousands of idle clients.
	maxKeptOutBuf = 16 << 10
)

func (o *output) init(conn net.Conn) {
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			o.raw = raw
			o.rawWrite = o.tryWrite
		}
	}
}

// sendReady moves the replies that are ready to the client, and flushes
// them now unless batched (the caller then calls Flush when its batch
// ends). It never blocks: if another goroutine holds the output, the writer
// goroutine is woken to look again.
func (s *session) sendReady(batched bool) {
	if !s.out.mu.TryLock() {
		s.wakeWriter()
		return
	}
	s.drainLocked(!batched, false)
	s.out.mu.Unlock()
}

// sendReplies sends the ready replies now, or, with a batch, leaves them
// buffered until the batch is flushed.
func (s *session) sendReplies(batch *pool.Batch) {
	if batch == nil {
		s.sendReady(false)
		return
	}
	s.sendReady(true)
	batch.Add(s)
}

// Flush implements pool.Flusher: it sends what batched completions left in
// the buffer.
func (s *session) Flush() { s.sendReady(false) }

var _ pool.Flusher = (*session)(nil)

// drainLocked appends every ready reply, in request order, to the buffer,
// recycling its request, and writes the buffer when flush is set or it is
// large. inWriter says the writer goroutine calls: it may block on the
// client; any other caller leaves that to the writer goroutine.
func (s *session) drainLocked(flush, inWriter bool) {
	o := &s.out
	if s.isDead() {
		return
	}
	if o.stalled && !inWriter {
		s.wakeWriter()
		return
	}
loop:
	for o.closeReason == "" {
		r := o.head
		if r == nil {
			select {
			case q, ok := <-s.queue:
				if !ok {
					o.closed = true
					s.wakeWriter() // so that it sees the end
					break loop
				}
				r = q
			default:
				break loop
			}
		}
		if !r.done.Load() {
			o.head = r
			break
		}
		if len(r.reply) >= largeReply && r.err == nil {
			if !inWriter {
				o.head, o.stalled = r, true
				s.wakeWriter()
				return
			}
			o.head = nil
			if !s.writeLarge(r) {
				return
			}
			continue
		}
		o.head = nil
		s.appendReply(r)
		if r.closeAfter {
			o.closeReason = r.closeReason
			flush = true
		}
		r.release()
		if len(o.buf) >= flushAt && (!s.flushLocked(inWriter) || o.stalled && !inWriter) {
			return
		}
	}
	if flush {
		s.flushLocked(inWriter)
	}
}

// appendReply adds r's reply (or its error) to the buffer and records its
// metrics.
func (s *session) appendReply(r *request) {
	s.replyOut(r)
	if r.err != nil {
		s.out.buf = redcon.AppendError(s.out.buf, "ERR "+r.err.Error())
		return
	}
	s.out.buf = append(s.out.buf, r.reply...)
}

// replyOut records that r's reply leaves the line: its metrics, and the
// counts that decide whether a push may skip the line (see pushDirect).
func (s *session) replyOut(r *request) {
	s.srv.metrics.Latency.WithLabelValues(r.route).Observe(time.Since(r.start).Seconds())
	if r.err == nil {
		s.pendingOut.Add(-int64(len(r.reply)))
	}
	switch r.pubsubKind {
	case confirmsSubscription:
		s.unconfirmedSubs.Add(-1)
	case queuedPush:
		s.queuedPushes.Add(-1)
	}
}

// writeLarge writes a large reply from the writer goroutine, after what is
// buffered, without copying it.
func (s *session) writeLarge(r *request) bool {
	if !s.flushLocked(true) || !s.writeBlocking(r.reply) {
		return false
	}
	s.replyOut(r)
	r.release()
	return true
}

// flushLocked writes the buffer: all of it, waiting, in the writer
// goroutine; elsewhere what the socket takes now, leaving the rest to the
// writer goroutine. It reports false when the session died.
func (s *session) flushLocked(inWriter bool) bool {
	o := &s.out
	if len(o.buf) > 0 {
		if inWriter {
			if !s.writeBlocking(o.buf) {
				return false
			}
			o.buf = o.buf[:0]
		} else {
			n, err := s.writeNow(o.buf)
			if err != nil {
				s.writeFailed(err)
				return false
			}
			o.buf = o.buf[:copy(o.buf, o.buf[n:])]
			if len(o.buf) > 0 {
				o.stalled = true
				s.wakeWriter()
				return true
			}
		}
		if cap(o.buf) > maxKeptOutBuf {
			o.buf = nil
		}
	}
	if inWriter {
		o.stalled = false
	}
	if o.closeReason != "" && len(o.buf) == 0 {
		s.kill(o.closeReason)
		return false
	}
	return true
}

// writeBlocking writes b, waiting for the client up to ClientWriteTimeout.
func (s *session) writeBlocking(b []byte) bool {
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.srv.opts.ClientWriteTimeout))
	if _, err := s.conn.Write(b); err != nil {
		s.writeFailed(err)
		return false
	}
	return true
}

// writeNow writes as much of b as the socket takes without waiting.
func (s *session) writeNow(b []byte) (int, error) {
	o := &s.out
	if o.raw == nil {
		return 0, nil
	}
	o.pending, o.written, o.writeErr = b, 0, nil
	err := o.raw.Write(o.rawWrite)
	n := o.written
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

func (s *session) writeFailed(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.kill("write_timeout")
		return
	}
	s.kill("write_error")
}

// writeLoop is the writer goroutine: it takes over when the client's socket
// would block or a large reply is due, and when it is woken because another
// goroutine found the output busy. It ends when the session dies or its
// queue is closed and every reply is written.
func (s *session) writeLoop() {
	for {
		select {
		case <-s.wake:
		case <-s.dead:
			return
		}
		s.out.mu.Lock()
		s.drainLocked(true, true)
		end := s.out.closed && s.out.head == nil && len(s.out.buf) == 0
		s.out.mu.Unlock()
		if end || s.isDead() {
			return
		}
	}
}

func (s *session) isDead() bool { return isClosed(s.dead) }

// isClosed reports whether ch is closed, without waiting.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
