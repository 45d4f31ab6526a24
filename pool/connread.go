package pool

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/funnel-proxy/funnel/resp"
)

// readLoop reads replies and hands each to the oldest written request (or,
// on a push connection, to the handler). It returns the error that ended
// the connection, and the request whose reply was cut off by it, if any:
// that one is failed by serve once the writer has stopped, since the writer
// may still be writing it.
func (c *Conn) readLoop(nc net.Conn) (head *Request, err error) {
	buf := make([]byte, readBuf)
	start, end := 0, 0
	var scan resp.ReplyScanner
	got := 0
	var batch Batch
	var mine line // taken from c.written, awaiting replies after head
	answered := 0 // requests completed since replied was last told
	defer func() {
		batch.Flush()
		// What was taken and not answered goes back, for serve to fail.
		c.mu.Lock()
		c.written.prepend(mine)
		c.mu.Unlock()
	}()
	var readAt time.Time
	rr := newReplyReader(nc, c.push != nil, &c.pool.metrics.UpstreamRead)
	// A reply may be on its way while a request is in flight or one is
	// partly read.
	expecting := func() bool { return c.outstanding.Load() > 0 || start < end }
	for {
		n, serr := scan.Scan(buf[start:end])
		if err = serr; err != nil {
			return head, &Error{Kind: Protocol, Err: err}
		}
		if n > 0 {
			switch {
			case c.push != nil:
				c.push.Push(buf[start:start+n], &batch)
			default:
				if head == nil {
					if head = mine.pop(); head == nil {
						mine = c.takeWritten()
						head = mine.pop()
					}
					if head == nil {
						return nil, &Error{Kind: Protocol, Err: fmt.Errorf("reply with no request: %q", resp.Quote(buf[start:start+n], 64))}
					}
					got = 0
				}
				got++
				if got == head.replies() {
					head.awaitSent()
					if head.Duration != nil {
						head.Duration.Observe(readAt.Sub(head.writtenAt).Seconds())
					}
					c.completeBatched(head, buf[start:start+n], &batch)
					head = nil
					answered++
				}
			}
			start += n
			continue
		}
		// Need more bytes: first send on the replies completed so far,
		// then make room, then read.
		if answered > 0 {
			c.replied(answered, readAt)
			answered = 0
		}
		batch.Flush()
		if start == end {
			start, end = 0, 0
			if len(buf) > maxIdleBuf {
				buf = make([]byte, readBuf)
			}
		} else if start > 0 {
			end = copy(buf, buf[start:end])
			start = 0
		}
		if end == len(buf) {
			grown := make([]byte, 2*len(buf))
			copy(grown, buf[:end])
			buf = grown
		}
		m, rerr := rr.Read(buf[end:], expecting)
		readAt = time.Now() // one clock read for the replies one read brings
		end += m
		if err = rerr; err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				return head, &Error{Kind: Timeout, Err: fmt.Errorf("no reply within %v", c.pool.opts.Timeout)}
			case head == nil && c.outstanding.Load() == 0 && end == start:
				return nil, fmt.Errorf("%w: %v", errIdleClosed, err)
			}
			return head, err
		}
	}
}

// takeWritten takes every request the writer handed over.
func (c *Conn) takeWritten() line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written.take()
}

// replied is called by the reader once it completed n requests, with the
// time of the read that brought their replies.
func (c *Conn) replied(n int, now time.Time) {
	c.mu.Lock()
	at := now.UnixNano()
	gap := at - c.progressAt.Swap(at)
	c.replyGap.Add((gap - c.replyGap.Load()) / 8)
	left := c.outstanding.Add(-int64(n))
	switch {
	case left == 0:
		c.noDeadline = false
		c.setReadDeadline(time.Time{})
	case c.noDeadline:
	case c.deadlineAt.Sub(now) < c.pool.opts.Timeout/2:
		// Move the deadline only when half of it is used up: SetReadDeadline
		// costs a timer update, and replies can come by the hundred thousand.
		c.setReadDeadline(now.Add(c.pool.opts.Timeout))
	}
	c.mu.Unlock()
	if c.writerWaits.Load() {
		select {
		case c.repliesRead <- struct{}{}:
		default:
		}
	}
}

// stallFloor and stallFactor decide when a busy connection is stalled: no
// reply for stallFactor times its usual gap between replies, and for at
// least stallFloor. The floor keeps the jitter of a fast local upstream from
// counting as a stall; the factor scales it to a remote upstream's round
// trip.
const (
	stallFloor  = 2 * time.Millisecond
	stallFactor = 4
)

// stalled reports whether c has requests outstanding and has had no reply
// for a while, now being unix nanos: a slow command (a long script, KEYS),
// or a large reply still coming, holds what is queued behind it, and Pick
// sends clients elsewhere.
func (c *Conn) stalled(now int64) bool {
	if c.outstanding.Load() == 0 {
		return false
	}
	limit := max(int64(stallFloor), stallFactor*c.replyGap.Load())
	return now-c.progressAt.Load() > limit
}
