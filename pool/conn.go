package pool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/resp"
)

// Connection states, kept in Conn.state.
const (
	stateIdle    int32 = iota // not connected; the next request dials
	stateDialing              // a dial is under way
	stateUp                   // connected and serving
	stateDown                 // the last dial failed; requests fail fast until retryAt
)

const (
	minBackoff = 50 * time.Millisecond
	// maxBackoff is short so that funnel serves again within about a second of
	// the upstream's return. Redials happen only when a request needs the
	// connection, so a dead upstream is not hammered while nobody asks.
	maxBackoff = 500 * time.Millisecond

	writeBuf   = 32 << 10
	readBuf    = 16 << 10
	maxIdleBuf = 1 << 20 // a read buffer that grew past this is dropped when empty
)

// Role names a connection's role, for logs and the connections metric.
type Role uint8

// Lanes.
const (
	SharedLane    Role = iota // pipelined, shared by every client
	ExclusiveLane             // lent to one client at a time
	PubSubLane                // the pub/sub hub's subscriber connection
	AdminLane                 // a connection of its own for one command (SCRIPT KILL)
)

func (l Role) String() string {
	switch l {
	case SharedLane:
		return "shared"
	case ExclusiveLane:
		return "exclusive"
	case PubSubLane:
		return "pubsub"
	default:
		return "admin"
	}
}

// PushHandler receives what a push connection reads: every reply, in order,
// since a subscriber connection's replies are not matched to requests.
type PushHandler interface {
	// Push is called for each whole reply read; raw is valid only during
	// the call. It must not block; what it leaves buffered goes in batch.
	Push(raw []byte, batch *Batch)
	// Down is called when the connection ends, after its last Push.
	Down(err error)
}

// Conn is one long-lived upstream connection slot. Requests submitted to it
// are written in order and auto-pipelined: its writer collects whatever is
// queued, writes it in one go and flushes when the queue is empty. Its
// reader matches replies to requests in FIFO order. When the connection
// breaks, every request on it fails with the same sticky error and the slot
// redials lazily, when the next request comes.
type Conn struct {
	pool *Pool
	role Role
	// push, when set, makes this a push connection (see NewPushConn).
	push PushHandler

	// queue holds submitted requests not yet written. It is bounded; Submit
	// waits (with its context) while it is full, which pushes back on clients.
	queue chan *Request
	// load counts requests submitted and not yet completed.
	load atomic.Int64
	// enqueued counts requests queued, raised after each one is in the
	// queue (see Enqueued).
	enqueued atomic.Uint64
	// state is one of the state constants.
	state atomic.Int32
	// stop is closed to end an exclusive connection on its own; nil (never
	// ready) for shared ones, which end with the pool.
	stop     chan struct{}
	stopOnce sync.Once
	// upstreamID is the upstream's CLIENT ID for this connection, learnt at
	// login on exclusive connections (for CLIENT UNBLOCK); 0 when unknown.
	upstreamID atomic.Int64

	// Guarded by mu (never held across I/O).
	mu       sync.Mutex
	lastErr  error
	retryAt  time.Time
	failures int
	// outstanding counts written requests whose replies are not all read; it
	// decides the read deadline (see armDeadline).
	outstanding int
	deadlineAt  time.Time
	noDeadline  bool // a request without a reply deadline is outstanding
	nc          net.Conn
}

func newConn(p *Pool, role Role, queueLen int) *Conn {
	c := &Conn{pool: p, role: role, queue: make(chan *Request, queueLen)}
	if role != SharedLane {
		c.stop = make(chan struct{})
	}
	return c
}

// Load returns the number of requests submitted to c and not yet completed.
func (c *Conn) Load() int64 { return c.load.Load() }

// Enqueued counts the requests queued on c so far. It rises only once a
// request is in the queue, so a request queued after Enqueued returned n
// is written after the n-th: callers compare positions in c's order with it.
func (c *Conn) Enqueued() uint64 { return c.enqueued.Load() }

// Up reports whether c has a working connection now.
func (c *Conn) Up() bool { return c.state.Load() == stateUp }

// UpstreamID returns the upstream's client id of an exclusive connection
// that is up, or 0.
func (c *Conn) UpstreamID() int64 { return c.upstreamID.Load() }

// usable reports whether a request sent now would be tried (not failed fast
// by a redial backoff).
func (c *Conn) usable() bool {
	if c.state.Load() != stateDown {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !time.Now().Before(c.retryAt)
}

// Submit queues r on c. It returns at once unless the queue is full, and
// then waits until there is room, ctx ends or the pool closes; in those two
// cases r is completed with an error. Either way r.Done hears exactly once.
func (c *Conn) Submit(ctx context.Context, r *Request) {
	c.load.Add(1)
	select {
	case c.queue <- r:
		c.enqueued.Add(1)
		return
	default:
	}
	select {
	case c.queue <- r:
		c.enqueued.Add(1)
	case <-ctx.Done():
		c.complete(r, nil, &Error{Kind: Closed, Err: ctx.Err()})
	case <-c.pool.closing:
		c.complete(r, nil, &Error{Kind: Closed, Err: ErrClosed})
	}
}

// TrySubmit queues r on c if there is room now, and reports whether it did;
// if not, r is left alone.
func (c *Conn) TrySubmit(r *Request) bool {
	c.load.Add(1)
	select {
	case c.queue <- r:
		c.enqueued.Add(1)
		return true
	default:
		c.load.Add(-1)
		return false
	}
}

// Close ends an exclusive, push or admin connection: what is on it fails,
// and the slot is not redialed. It is idempotent.
func (c *Conn) Close() {
	if c.stop != nil {
		c.stopOnce.Do(func() { close(c.stop) })
	}
}

// Break closes the socket of c if it is up, so that it redials. Requests on
// it fail as on any broken connection.
func (c *Conn) Break() {
	c.mu.Lock()
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
}

func (c *Conn) complete(r *Request, reply []byte, err error) {
	c.counted(err)
	r.Done.Complete(reply, err)
}

// completeBatched completes r as complete does, but lets a BatchCompleter
// leave its reply buffered until batch is flushed.
func (c *Conn) completeBatched(r *Request, reply []byte, batch *Batch) {
	bc, ok := r.Done.(BatchCompleter)
	if !ok {
		c.complete(r, reply, nil)
		return
	}
	c.counted(nil)
	bc.CompleteBatched(reply, nil, batch)
}

// counted records a request's end in c's load and the error metrics.
func (c *Conn) counted(err error) {
	c.load.Add(-1)
	if err != nil && !errors.Is(err, ErrCancelled) {
		var pe *Error
		kind := Lost
		if errors.As(err, &pe) {
			kind = pe.Kind
		}
		c.pool.metrics.Errors.WithLabelValues(kind.String()).Inc()
	}
}

// run owns the slot: it waits for work, dials, serves until the connection
// breaks, and starts over. It ends when the pool closes or c is closed.
func (c *Conn) run() {
	defer c.pool.wg.Done()
	for {
		var first *Request
		select {
		case first = <-c.queue:
		case <-c.pool.closing:
			c.failAll(&Error{Kind: Closed, Err: ErrClosed})
			return
		case <-c.stop:
			c.failAll(&Error{Kind: Lost, Err: errStopped})
			return
		}
		if first.cancelled() {
			c.complete(first, nil, &Error{Kind: Closed, Err: ErrCancelled})
			continue
		}
		if err := c.downErr(); err != nil {
			c.complete(first, nil, err)
			continue
		}
		c.state.Store(stateDialing)
		nc, id, err := c.pool.dial(c.pool.ctx, c.role == ExclusiveLane)
		if err != nil {
			c.setDown(err)
			c.pool.log.Warn("upstream dial failed; funnel retries when the next command needs it (check the upstream URL, its password and that it is reachable)",
				"lane", c.role.String(), "upstream", c.pool.upstream.String(), "err", err)
			c.complete(first, nil, err)
			c.failQueued(err)
			continue
		}
		c.upstreamID.Store(id)
		c.serve(nc, first)
		c.upstreamID.Store(0)
	}
}

// downErr returns the sticky dial error while the slot is backing off.
func (c *Conn) downErr() error {
	if c.state.Load() != stateDown {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Now().Before(c.retryAt) {
		return c.lastErr
	}
	return nil
}

// setDown records a failed dial and when to try again: capped exponential
// backoff with jitter, so many slots do not redial in step.
func (c *Conn) setDown(err error) {
	c.mu.Lock()
	c.failures++
	d := minBackoff << min(c.failures-1, 10)
	d = min(d, maxBackoff)
	d = d/2 + rand.N(d/2+1)
	c.lastErr = err
	c.retryAt = time.Now().Add(d)
	c.mu.Unlock()
	c.state.Store(stateDown)
}

// failAll fails every queued request, as c ends for good.
func (c *Conn) failAll(err error) {
	for len(c.queue) > 0 {
		c.failQueued(err)
	}
}

// failQueued fails what is queued now, and not what comes meanwhile:
// clients whose requests fail may send the next one at once, and an
// unbounded drain would keep failing them instead of redialing.
func (c *Conn) failQueued(err error) {
	for n := len(c.queue); n > 0; n-- {
		select {
		case r := <-c.queue:
			c.complete(r, nil, err)
		default:
			return
		}
	}
}

// serve runs one live connection: this goroutine writes, a second one reads.
// It returns once the connection is closed and every request written on it
// has been answered or failed.
func (c *Conn) serve(nc net.Conn, first *Request) {
	c.mu.Lock()
	c.failures, c.outstanding, c.nc = 0, 0, nc
	c.deadlineAt, c.noDeadline = time.Time{}, c.push != nil
	c.mu.Unlock()
	c.state.Store(stateUp)
	gauge := c.pool.metrics.UpstreamConns.WithLabelValues(c.role.String())
	gauge.Inc()
	defer gauge.Dec()

	inflight := make(chan *Request, c.pool.opts.MaxInFlight)
	broken := make(chan struct{})
	var once sync.Once
	var cause error
	breakConn := func(err error) {
		once.Do(func() {
			cause = err
			close(broken)
			nc.Close()
		})
	}
	readerDone := make(chan struct{})
	var cut *Request
	go func() {
		defer close(readerDone)
		var err error
		cut, err = c.readLoop(nc, inflight)
		breakConn(err)
	}()
	if err := c.writeLoop(nc, first, inflight, broken); err != nil {
		breakConn(err)
	}
	<-readerDone
	c.state.Store(stateIdle)
	c.mu.Lock()
	c.nc = nil
	c.mu.Unlock()

	failure := asPoolError(cause)
	lost := 0
	if cut != nil {
		lost++
		c.complete(cut, nil, failure)
	}
	for {
		select {
		case r := <-inflight:
			lost++
			c.complete(r, nil, failure)
			continue
		default:
		}
		break
	}
	// Requests still queued were never written; they fail too, rather than
	// move to another connection, so that a client's later commands cannot
	// overtake its earlier ones.
	c.failQueued(failure)
	if c.push != nil {
		c.push.Down(failure)
	}
	switch {
	case errors.Is(cause, errStopped), c.role == AdminLane:
	case lost > 0 || !errors.Is(cause, errIdleClosed):
		c.pool.log.Warn("upstream connection closed; the commands on it got a funnel: error and funnel redials when needed",
			"lane", c.role.String(), "err", cause, "failed_requests", lost)
	}
}

// asPoolError gives a connection's failure the form clients see.
func asPoolError(err error) error {
	var pe *Error
	if errors.As(err, &pe) {
		return err
	}
	return &Error{Kind: Lost, Err: err}
}

// errStopped ends an exclusive connection that was discarded, for example
// because its client went away while blocked.
var errStopped = errors.New("connection discarded")

// errIdleClosed means the upstream closed a connection that had nothing in
// flight; hosted Redis services do this to idle clients. It is not a failure.
var errIdleClosed = errors.New("closed by upstream while idle")

// writeLoop writes requests as they come and flushes whenever the queue runs
// dry, which pipelines the commands of all clients that share c.
func (c *Conn) writeLoop(nc net.Conn, first *Request, inflight chan<- *Request, broken <-chan struct{}) error {
	bw := bufio.NewWriterSize(newRequestWriter(nc, c.pool.opts.Timeout, &c.pool.metrics.UpstreamWritten), writeBuf)
	next := first
	for {
		if next == nil {
			select {
			case next = <-c.queue:
			case <-broken:
				return nil
			case <-c.stop:
				return errStopped
			case <-c.pool.closing:
				// Let what was written finish: the reader ends once it has
				// every reply, or the shutdown deadline closes the socket.
				c.drainOnClose()
				return nil
			}
		}
		// One clock read for the requests one write carries.
		now := time.Now()
		for next != nil {
			if next.cancelled() {
				c.complete(next, nil, &Error{Kind: Closed, Err: ErrCancelled})
			} else if err := c.writeOne(bw, next, now, inflight, broken); err != nil {
				return err
			}
			select {
			case next = <-c.queue:
			default:
				// Before flushing, let the goroutines that are ready to run
				// here (clients' readers just woken with a command) queue
				// theirs, so one write carries many clients' commands.
				runtime.Gosched()
				select {
				case next = <-c.queue:
				default:
					next = nil
				}
			}
		}
		if err := bw.Flush(); err != nil {
			return err
		}
	}
}

// writeOne puts r in the in-flight line (push connections complete it
// instead: their replies are not matched to requests) and writes it.
func (c *Conn) writeOne(bw *bufio.Writer, r *Request, now time.Time, inflight chan<- *Request, broken <-chan struct{}) error {
	if c.push == nil {
		// The line almost always has room: a plain send costs one channel
		// lock, the select below two and a sort.
		select {
		case inflight <- r:
		default:
			select {
			case inflight <- r:
			case <-broken:
				c.complete(r, nil, &Error{Kind: Lost, Err: errors.New("connection broke before the command was sent")})
				return errors.New("connection broke")
			}
		}
		c.armDeadline(r.Timeout, now)
	}
	if r.Duration != nil {
		r.writtenAt = now
	}
	_, err := bw.Write(r.Raw)
	r.sent.Store(true)
	if c.push != nil {
		if err == nil {
			err = bw.Flush()
		}
		c.complete(r, nil, asErr(err))
	}
	return err
}

func asErr(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: Lost, Err: err}
}

// drainOnClose waits, after the pool began closing, until every written
// request has its reply, then closes the connection so the reader ends.
func (c *Conn) drainOnClose() {
	for {
		c.mu.Lock()
		n := c.outstanding
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

// armDeadline is called before a request is written. A connection going
// from idle to busy gets a read deadline; the reader extends it as replies
// arrive. So a stalled upstream fails the connection after the timeout even
// while new requests keep coming, and an idle connection has no deadline.
func (c *Conn) armDeadline(timeout time.Duration, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case timeout == NoTimeout:
		// A command that may block for ever (BLPOP ... 0). Only exclusive
		// connections carry these; TCP keepalive notices a dead upstream.
		c.deadlineAt = time.Time{}
		_ = c.nc.SetReadDeadline(time.Time{})
		c.noDeadline = true
	case c.noDeadline:
	case c.outstanding == 0 || timeout > c.pool.opts.Timeout:
		c.setReadDeadline(now.Add(max(timeout, c.pool.opts.Timeout)))
	}
	c.outstanding++
}

// replied is called by the reader after a request's last reply, with the
// time of the read that brought it.
func (c *Conn) replied(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outstanding--
	if c.outstanding == 0 {
		c.noDeadline = false
		c.setReadDeadline(time.Time{})
		return
	}
	if c.noDeadline {
		return
	}
	// Move the deadline only when half of it is used up: SetReadDeadline
	// costs a timer update, and replies can come by the hundred thousand.
	if c.deadlineAt.Sub(now) < c.pool.opts.Timeout/2 {
		c.setReadDeadline(now.Add(c.pool.opts.Timeout))
	}
}

// setReadDeadline must be called with mu held.
func (c *Conn) setReadDeadline(t time.Time) {
	if t.After(c.deadlineAt) || t.IsZero() {
		c.deadlineAt = t
		_ = c.nc.SetReadDeadline(t)
	}
}

// readLoop reads replies and hands each to the oldest written request (or,
// on a push connection, to the handler). It returns the error that ended
// the connection, and the request whose reply was cut off by it, if any:
// that one is failed by serve once the writer has stopped, since the writer
// may still be writing it.
func (c *Conn) readLoop(nc net.Conn, inflight <-chan *Request) (head *Request, err error) {
	buf := make([]byte, readBuf)
	start, end := 0, 0
	var scan resp.ReplyScanner
	got := 0
	var batch Batch
	defer batch.Flush()
	var readAt time.Time
	rr := newReplyReader(nc, c.push != nil, &c.pool.metrics.UpstreamRead)
	// A reply may be on its way while a request is in flight or one is
	// partly read.
	expecting := func() bool { return head != nil || len(inflight) > 0 || start < end }
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
					select {
					case head = <-inflight:
					default:
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
					c.replied(readAt)
				}
			}
			start += n
			continue
		}
		// Need more bytes: first send on the replies completed so far,
		// then make room, then read.
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
			case head == nil && len(inflight) == 0 && end == start:
				return nil, fmt.Errorf("%w: %v", errIdleClosed, err)
			}
			return head, err
		}
	}
}
