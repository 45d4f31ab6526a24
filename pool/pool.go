// Package pool keeps funnel's small fixed set of long-lived upstream
// connections and pipelines every client's requests through them.
package pool

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
)

// Options configure a Pool.
type Options struct {
	Size        int           // shared connections (default 10)
	Timeout     time.Duration // longest wait for a reply before the connection is failed (default 30s)
	DialTimeout time.Duration // connect, TLS and login (default 5s)
	QueueLen    int           // requests waiting to be written per connection (default 1024)
	MaxInFlight int           // requests written and awaiting replies per connection (default 4096)
	// MaxExclusive caps the exclusive lane (default 32); ExclusiveIdle is
	// how long a returned exclusive connection stays open (default 60s).
	MaxExclusive  int
	ExclusiveIdle time.Duration
	Logger        *slog.Logger
	Metrics       *metrics.Metrics
}

func (o *Options) setDefaults() {
	if o.Size <= 0 {
		o.Size = 10
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 1024
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 4096
	}
	if o.MaxExclusive <= 0 {
		o.MaxExclusive = 32
	}
	if o.ExclusiveIdle <= 0 {
		o.ExclusiveIdle = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Pool is a fixed set of upstream connection slots, dialed lazily.
type Pool struct {
	upstream Upstream
	opts     Options
	log      *slog.Logger
	metrics  *metrics.Metrics
	conns    []*Conn
	lane     *Lane

	ctx             context.Context // cancelled on Close: stops dials
	cancel          context.CancelFunc
	closing         chan struct{} // closed when Close begins
	shutdownExpired chan struct{} // closed when Close gives up waiting for replies
	closeOnce       sync.Once
	submitMu        sync.RWMutex // held for reading while a request is queued
	closed          bool         // guarded by submitMu
	wg              sync.WaitGroup
}

// New returns a pool for upstream. No connection is made until a request
// needs one.
func New(upstream Upstream, opts Options) *Pool {
	opts.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		upstream: upstream, opts: opts, log: opts.Logger, metrics: opts.Metrics,
		ctx: ctx, cancel: cancel,
		closing: make(chan struct{}), shutdownExpired: make(chan struct{}),
	}
	p.lane = newLane(p, opts.MaxExclusive, opts.ExclusiveIdle)
	for range opts.Size {
		c := newConn(p, SharedLane, opts.QueueLen)
		p.conns = append(p.conns, c)
		p.wg.Add(1)
		go c.run()
	}
	return p
}

// dial opens and logs in a connection for one of the pool's slots, and
// counts the attempt and the login commands (they are billed).
func (p *Pool) dial(ctx context.Context, wantID bool) (net.Conn, int64, error) {
	nc, id, err := p.upstream.dial(ctx, p.opts.DialTimeout, wantID, p.counted, func(name string) {
		p.metrics.Command(name).Upstream(1)
	})
	if err != nil {
		p.metrics.UpstreamDials.WithLabelValues("error").Inc()
		return nil, 0, &Error{Kind: Unavailable, Err: err}
	}
	p.metrics.UpstreamDials.WithLabelValues("ok").Inc()
	return nc, id, nil
}

// NewPushConn returns a connection whose replies all go to h instead of
// being matched to requests, for a subscriber (the pub/sub hub). It dials
// when the first request comes, like any slot, and redials on the next
// request after it breaks; h.Down tells when that happened. A request on it
// completes once written. It ends with the pool, or with Close.
func (p *Pool) NewPushConn(h PushHandler) *Conn {
	c := newConn(p, PubSubLane, 4096)
	c.push = h
	p.wg.Add(1)
	go c.run()
	return c
}

// NewAdminConn returns a connection of its own for one command that must
// not wait behind others (SCRIPT KILL while a script runs). The caller
// submits to it and closes it when done.
func (p *Pool) NewAdminConn() *Conn {
	c := newConn(p, AdminLane, 4)
	p.wg.Add(1)
	go c.run()
	return c
}

// Timeout returns the reply timeout.
func (p *Pool) Timeout() time.Duration { return p.opts.Timeout }

// Lane returns the pool's exclusive lane.
func (p *Pool) Lane() *Lane { return p.lane }

// Options returns the options the pool was made with, defaults filled in.
func (p *Pool) Options() Options { return p.opts }

// Upstream returns where the pool connects.
func (p *Pool) Upstream() Upstream { return p.upstream }

// requestWeight is what one command weighs on a connection beside its
// bytes (see Request.weigh): a small command takes Redis and the network
// about as long as moving 512 bytes more would.
const requestWeight = 512

// pipelineWeight is the load Pick lets pile up on one connection before it
// spreads clients to another: some 450 small commands, or fewer whose
// requests and expected replies come to 256 KiB. Concentrating concurrent
// requests on few connections is what makes auto-pipelining pay: one write
// and one read carry many clients' commands, which saves system calls here
// and in the upstream, and packets on the way to a remote one. Counting
// bytes keeps a new client from queueing behind one client's long transfer:
// a pipeline of large values is worth little concentration, since its
// bytes already fill each write and read. What bounds the harm of a slow
// command to the clients queued behind it is the stall rule (see
// Conn.stalled): once a connection has had no reply for a while, no new
// client is sent to it.
const pipelineWeight = 512 * requestWeight

// Pick chooses a connection for a client with nothing in flight: the first
// live connection that is not stalled and has less than pipelineWeight on
// it, else a fresh slot while the pool is still growing, else the least
// loaded live one that is not stalled, else the least loaded.
func (p *Pool) Pick() *Conn {
	var least, fresh, fallback *Conn
	var now int64 // read once, when a busy connection is looked at
	for _, c := range p.conns {
		load := c.Load()
		switch c.state.Load() {
		case stateUp:
			if c.outstanding.Load() > 0 {
				if now == 0 {
					now = time.Now().UnixNano()
				}
				if c.stalled(now) {
					break
				}
			}
			if load < pipelineWeight {
				return c
			}
			if least == nil || load < least.Load() {
				least = c
			}
		case stateIdle:
			if fresh == nil {
				fresh = c
			}
		case stateDown:
			if fresh == nil && c.usable() {
				fresh = c
			}
		}
		if fallback == nil || load < fallback.Load() {
			fallback = c
		}
	}
	switch {
	case fresh != nil:
		return fresh
	case least != nil:
		return least
	default:
		return fallback // dialing, stalled, or every slot backing off: it answers fast
	}
}

// Submit queues r on c, or fails it at once when the pool is closed. See
// Conn.Submit.
func (p *Pool) Submit(ctx context.Context, c *Conn, r *Request) {
	p.submitMu.RLock()
	defer p.submitMu.RUnlock()
	if p.closed {
		r.Done.Complete(nil, &Error{Kind: Closed, Err: ErrClosed})
		return
	}
	c.Submit(ctx, r)
}

// TrySubmit queues r on c if that needs no wait, and reports whether it
// did. When the pool is closed, r is failed at once and TrySubmit reports
// true.
func (p *Pool) TrySubmit(c *Conn, r *Request) bool {
	p.submitMu.RLock()
	defer p.submitMu.RUnlock()
	if p.closed {
		r.Done.Complete(nil, &Error{Kind: Closed, Err: ErrClosed})
		return true
	}
	return c.TrySubmit(r)
}

// Ready reports whether the upstream can be reached: a connection is up, or
// a new one connects (TCP and TLS, without a billed login) within ctx.
func (p *Pool) Ready(ctx context.Context) error {
	for _, c := range p.conns {
		if c.Up() {
			return nil
		}
	}
	nc, err := p.upstream.connect(ctx, p.opts.DialTimeout)
	if err != nil {
		return &Error{Kind: Unavailable, Err: err}
	}
	return nc.Close()
}

// Close stops the pool. Requests already written get their replies until
// ctx ends; then every connection is closed and what is left fails. Close
// is idempotent.
func (p *Pool) Close(ctx context.Context) {
	p.closeOnce.Do(func() {
		close(p.closing)
		p.submitMu.Lock()
		p.closed = true
		p.submitMu.Unlock()
		done := make(chan struct{})
		go func() { p.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			close(p.shutdownExpired)
			p.cancel()
			<-done
		}
		p.cancel()
		// No Submit can queue after closed was set; fail what slipped in
		// before the slots stopped.
		for _, c := range append(p.conns, p.lane.conns()...) {
			c.failQueued(&Error{Kind: Closed, Err: ErrClosed})
		}
	})
}

// Size returns the number of shared connection slots.
func (p *Pool) Size() int { return len(p.conns) }

// UpCount returns how many shared connections are up now.
func (p *Pool) UpCount() int {
	n := 0
	for _, c := range p.conns {
		if c.Up() {
			n++
		}
	}
	return n
}
