package pool

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
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

	// qmu guards queued, the requests submitted and not yet taken by the
	// writer, and roomMade. It is held only for a few pointer moves.
	qmu    sync.Mutex
	queued line
	// queueLen bounds queued; Submit waits (with its context) while it is
	// full, which pushes back on clients.
	queueLen int
	// roomMade, when not nil, is closed once the writer takes from the
	// queue: what Submit waits on while the queue is full.
	roomMade chan struct{}
	// wake holds a token once a request comes to an empty queue, for the
	// slot's goroutine (run or the writer) waiting for work.
	wake chan struct{}
	// load is the weight of the requests submitted and not yet completed
	// (see Request.weigh).
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
	// written holds the requests the writer handed over and the reader has
	// not taken yet, in the order they were written.
	written line
	// outstanding counts written requests whose replies are not all read; it
	// decides the read deadline (see armDeadline). It changes only with mu
	// held, and is read without it.
	outstanding atomic.Int64
	deadlineAt  time.Time
	noDeadline  bool // a request without a reply deadline is outstanding
	nc          net.Conn

	// progressAt is when c last made progress (unix nanos): when its
	// outstanding requests rose from none, or replies last came. replyGap is
	// the usual time between the two, smoothed. Together they tell Pick
	// that c is stalled (see stalled).
	progressAt atomic.Int64
	replyGap   atomic.Int64

	// writerWaits is set while the writer waits for replies because
	// MaxInFlight requests are outstanding; the reader then puts a token in
	// repliesRead.
	writerWaits atomic.Bool
	repliesRead chan struct{}
}

func newConn(p *Pool, role Role, queueLen int) *Conn {
	c := &Conn{
		pool: p, role: role, queueLen: queueLen,
		wake: make(chan struct{}, 1), repliesRead: make(chan struct{}, 1),
	}
	if role != SharedLane {
		c.stop = make(chan struct{})
	}
	return c
}

// Load returns the weight of the requests submitted to c and not yet
// completed: requestWeight for each command, plus the bytes each sends and
// is expected to bring back.
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
	c.load.Add(r.weigh())
	for {
		queued, room := c.enqueue(r, true)
		if queued {
			return
		}
		select {
		case <-room:
		case <-ctx.Done():
			c.complete(r, nil, &Error{Kind: Closed, Err: ctx.Err()})
			return
		case <-c.pool.closing:
			c.complete(r, nil, &Error{Kind: Closed, Err: ErrClosed})
			return
		}
	}
}

// TrySubmit queues r on c if there is room now, and reports whether it did;
// if not, r is left alone.
func (c *Conn) TrySubmit(r *Request) bool {
	c.load.Add(r.weigh())
	if queued, _ := c.enqueue(r, false); !queued {
		c.load.Add(-r.weight)
		return false
	}
	return true
}

// enqueue adds r to the queue if it has room, and reports whether it did.
// If not, and wait is set, room is closed once there may be room.
func (c *Conn) enqueue(r *Request, wait bool) (queued bool, room <-chan struct{}) {
	c.qmu.Lock()
	if c.queued.n >= c.queueLen {
		defer c.qmu.Unlock()
		if wait && c.roomMade == nil {
			c.roomMade = make(chan struct{})
		}
		return false, c.roomMade
	}
	c.queued.push(r)
	wasEmpty := c.queued.n == 1
	c.enqueued.Add(1)
	c.qmu.Unlock()
	if wasEmpty {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return true, nil
}

// takeQueued takes every queued request, in order, and lets waiting
// submitters in.
func (c *Conn) takeQueued() line {
	c.qmu.Lock()
	l := c.queued.take()
	c.roomMadeLocked(l.n)
	c.qmu.Unlock()
	return l
}

// popQueued takes the first queued request, or returns nil.
func (c *Conn) popQueued() *Request {
	c.qmu.Lock()
	r := c.queued.pop()
	if r != nil {
		c.roomMadeLocked(1)
	}
	c.qmu.Unlock()
	return r
}

// roomMadeLocked lets waiting submitters in once n requests left the
// queue; qmu must be held.
func (c *Conn) roomMadeLocked(n int) {
	if c.roomMade != nil && n > 0 {
		close(c.roomMade)
		c.roomMade = nil
	}
}

// unqueue puts requests taken from the queue and not written back at its
// front, where serve fails them.
func (c *Conn) unqueue(l line) {
	c.qmu.Lock()
	c.queued.prepend(l)
	c.qmu.Unlock()
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
	c.counted(r, err)
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
	c.counted(r, nil)
	bc.CompleteBatched(reply, nil, batch)
}

// counted records the end of r in c's load and the error metrics.
func (c *Conn) counted(r *Request, err error) {
	c.load.Add(-r.weight)
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
		select {
		case <-c.pool.closing:
			c.failAll(&Error{Kind: Closed, Err: ErrClosed})
			return
		case <-c.stop:
			c.failAll(&Error{Kind: Lost, Err: errStopped})
			return
		default:
		}
		first := c.popQueued()
		if first == nil {
			select {
			case <-c.wake:
			case <-c.pool.closing:
			case <-c.stop:
			}
			continue
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
	for c.failQueued(err) > 0 {
	}
}

// failQueued fails what is queued now, and not what comes meanwhile:
// clients whose requests fail may send the next one at once, and an
// unbounded drain would keep failing them instead of redialing. It returns
// how many it failed.
func (c *Conn) failQueued(err error) int {
	return c.fail(c.takeQueued(), err)
}

// fail completes every request of l with err, and returns how many.
func (c *Conn) fail(l line, err error) int {
	n := l.n
	for r := l.pop(); r != nil; r = l.pop() {
		c.complete(r, nil, err)
	}
	return n
}

// serve runs one live connection: this goroutine writes, a second one reads.
// It returns once the connection is closed and every request written on it
// has been answered or failed.
func (c *Conn) serve(nc net.Conn, first *Request) {
	c.mu.Lock()
	c.failures, c.nc = 0, nc
	c.outstanding.Store(0)
	c.deadlineAt, c.noDeadline = time.Time{}, c.push != nil
	c.mu.Unlock()
	c.state.Store(stateUp)
	gauge := c.pool.metrics.UpstreamConns.WithLabelValues(c.role.String())
	gauge.Inc()
	defer gauge.Dec()

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
		cut, err = c.readLoop(nc)
		breakConn(err)
	}()
	if err := c.writeLoop(nc, first, broken); err != nil {
		breakConn(err)
	}
	<-readerDone
	c.state.Store(stateIdle)
	c.mu.Lock()
	c.nc = nil
	unanswered := c.written.take()
	c.mu.Unlock()

	failure := asPoolError(cause)
	lost := 0
	if cut != nil {
		lost++
		c.complete(cut, nil, failure)
	}
	lost += c.fail(unanswered, failure)
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
