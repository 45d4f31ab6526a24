package pool

import (
	"bufio"
	"errors"
	"net"
	"runtime"
	"time"
)

// writeLoop writes requests as they come and flushes whenever the queue runs
// dry, which pipelines the commands of all clients that share c. It takes
// the queue whole and hands what it wrote to the reader a write at a time:
// a lock each, not a channel operation per request.
func (c *Conn) writeLoop(nc net.Conn, first *Request, broken <-chan struct{}) (err error) {
	bw := bufio.NewWriterSize(newRequestWriter(nc, c.pool.opts.Timeout, &c.pool.metrics.UpstreamWritten), writeBuf)
	var todo line    // taken from the queue, not yet written
	var written line // written into bw, not yet handed to the reader
	todo.push(first)
	defer func() {
		// Written requests are failed with the reader's, as in flight; the
		// others go back to the queue, to be failed as never written.
		c.handOver(&written, time.Now())
		c.unqueue(todo)
	}()
	for {
		if todo.n == 0 {
			if todo = c.takeQueued(); todo.n == 0 {
				select {
				case <-c.wake:
					continue
				case <-broken:
					return nil
				case <-c.stop:
					return errStopped
				case <-c.pool.closing:
					// Let what was written finish: the reader ends once it
					// has every reply, or the shutdown deadline closes the
					// socket.
					c.drainOnClose()
					return nil
				}
			}
		}
		// One clock read for the requests one write carries.
		now := time.Now()
		for r := todo.pop(); r != nil; r = todo.pop() {
			switch {
			case r.cancelled():
				c.complete(r, nil, &Error{Kind: Closed, Err: ErrCancelled})
			case c.push != nil:
				if err := c.writePush(bw, r); err != nil {
					return err
				}
			default:
				if c.outstanding.Load()+int64(written.n) >= int64(c.pool.opts.MaxInFlight) {
					// Let the reader catch up before writing more.
					c.handOver(&written, now)
					if err := bw.Flush(); err != nil {
						todo.pushFront(r)
						return err
					}
					if !c.awaitReplies(broken) {
						todo.pushFront(r)
						return errors.New("connection broke")
					}
					now = time.Now()
				}
				if err := c.write(bw, r, &written, now); err != nil {
					return err
				}
			}
			if todo.n == 0 {
				if todo = c.takeQueued(); todo.n == 0 {
					// Before flushing, let the goroutines that are ready to
					// run here (clients' readers just woken with a command)
					// queue theirs, so one write carries many clients'
					// commands.
					runtime.Gosched()
					todo = c.takeQueued()
				}
			}
		}
		c.handOver(&written, now)
		if err := bw.Flush(); err != nil {
			return err
		}
	}
}

// write adds r to the written line and writes it into bw. The line goes to
// the reader before any of r's bytes can reach the socket, so no reply can
// come before its request is in the reader's reach.
func (c *Conn) write(bw *bufio.Writer, r *Request, written *line, now time.Time) error {
	written.push(r)
	if r.Duration != nil {
		r.writtenAt = now
	}
	if bw.Available() < len(r.Raw) {
		c.handOver(written, now) // this write flushes
	}
	_, err := bw.Write(r.Raw)
	r.sent.Store(true)
	return err
}

// writePush writes r on a push connection, whose replies are not matched to
// requests: r completes once written.
func (c *Conn) writePush(bw *bufio.Writer, r *Request) error {
	_, err := bw.Write(r.Raw)
	if err == nil {
		err = bw.Flush()
	}
	r.sent.Store(true)
	c.complete(r, nil, asErr(err))
	return err
}

func asErr(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: Lost, Err: err}
}

// handOver moves the written requests to the reader's line, counts them
// outstanding, and arms the read deadline for them (see armDeadline).
func (c *Conn) handOver(written *line, now time.Time) {
	if written.n == 0 {
		return
	}
	var longest time.Duration
	forever := false
	for r := written.head; r != nil; r = r.lineNext {
		if r.Timeout == NoTimeout {
			forever = true
		} else {
			longest = max(longest, r.Timeout)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nc != nil {
		c.armDeadline(longest, forever, now)
	}
	if c.outstanding.Load() == 0 {
		c.progressAt.Store(now.UnixNano()) // busy from now
	}
	c.outstanding.Add(int64(written.n))
	c.written.add(written.take())
}

// awaitReplies waits while MaxInFlight requests are outstanding. It reports
// false if the connection broke meanwhile.
func (c *Conn) awaitReplies(broken <-chan struct{}) bool {
	limit := int64(c.pool.opts.MaxInFlight)
	for c.outstanding.Load() >= limit {
		c.writerWaits.Store(true)
		// Looked at again after the flag is up: the reader, which lowers
		// outstanding before it looks at the flag, cannot miss the wait.
		if c.outstanding.Load() < limit {
			c.writerWaits.Store(false)
			break
		}
		select {
		case <-c.repliesRead:
		case <-broken:
			c.writerWaits.Store(false)
			return false
		}
		c.writerWaits.Store(false)
	}
	return true
}

// drainOnClose waits, after the pool began closing, until every written
// request has its reply, then closes the connection so the reader ends.
func (c *Conn) drainOnClose() {
	for {
		c.mu.Lock()
		n := c.outstanding.Load()
		nc := c.nc
		c.mu.Unlock()
		if n == 0 || c.push != nil {
			nc.Close()
			return
		}
		select {
		case <-c.pool.shutdownExpired:
			nc.Close()
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// armDeadline is called, with mu held, before requests are written whose
// longest reply timeout is longest, or that include one without a timeout
// (forever). A connection going from idle to busy gets a read deadline; the
// reader extends it as replies arrive. So a stalled upstream fails the
// connection after the timeout even while new requests keep coming, and an
// idle connection has no deadline.
func (c *Conn) armDeadline(longest time.Duration, forever bool, now time.Time) {
	switch {
	case forever:
		// A command that may block for ever (BLPOP ... 0). Only exclusive
		// connections carry these; TCP keepalive notices a dead upstream.
		c.deadlineAt = time.Time{}
		_ = c.nc.SetReadDeadline(time.Time{})
		c.noDeadline = true
	case c.noDeadline:
	case c.outstanding.Load() == 0 || longest > c.pool.opts.Timeout:
		c.setReadDeadline(now.Add(max(longest, c.pool.opts.Timeout)))
	}
}

// setReadDeadline must be called with mu held.
func (c *Conn) setReadDeadline(t time.Time) {
	if t.After(c.deadlineAt) || t.IsZero() {
		c.deadlineAt = t
		_ = c.nc.SetReadDeadline(t)
	}
}
