package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/tidwall/redcon"
)

// session is one client connection. Its reader parses commands and routes
// each one; its output (see output.go) sends the replies back in the order
// the commands came, whatever order they were answered in.
type session struct {
	srv  *Server
	conn net.Conn
	id   int64

	// queue carries requests from the reader to the output in arrival
	// order. It is bounded (Options.MaxPipeline); a reader that fills it
	// waits, so a client that pipelines without reading is slowed, not
	// buffered forever.
	queue chan *request
	// wake calls the writer goroutine to the output; see writeLoop.
	wake chan struct{}
	// dead is closed when the session must end at once.
	dead       chan struct{}
	killOnce   sync.Once
	killReason atomic.Value // string

	// pendingOut counts reply bytes held for this client and not yet
	// written; over Options.ClientOutputLimit the client is closed.
	pendingOut atomic.Int64
	// upInFlight counts this client's requests sent upstream and not yet
	// answered. While it is above zero, new requests go to sticky, the
	// connection they are on, so Redis runs them in the client's order.
	upInFlight atomic.Int64
	// unconfirmedSubs counts SUBSCRIBE replies, and queuedPushes messages,
	// queued and not yet sent; while either is above zero a RESP3 push
	// waits in line (see pushDirect).
	unconfirmedSubs, queuedPushes atomic.Int64
	sticky                        *pool.Conn
	// stickyLease is the lease of sticky when it is an exclusive connection
	// the client is finishing with; requests sent there carry it, so the
	// last to complete releases the connection.
	stickyLease *lease
	// lease is the exclusive connection the client holds now (WATCH span,
	// blocking command being routed); while set, everything goes there.
	lease *lease
	// idle is signalled when upInFlight drops to zero.
	idle chan struct{}
	// multi buffers a transaction between MULTI and EXEC.
	multi *multiState
	// subs are the client's pub/sub subscriptions; any puts it in
	// subscribed mode.
	subs map[subKey]bool
	// keyPos and keyArgs are scratch for invalidation, reused per command.
	keyPos  []int
	keyArgs [][]byte
	// db is the client's selected db, and pool the pool that serves it.
	db   int
	pool *pool.Pool

	// Client state, owned by the reader goroutine; info guards what
	// CLIENT LIST reads from other sessions.
	info     clientInfo
	authed   bool
	reader   *resp.RequestReader
	draining atomic.Bool // set by Shutdown: stop reading new commands

	// out sends the replies; see output.
	out output
}

func newSession(srv *Server, conn net.Conn, id int64) *session {
	s := &session{
		srv: srv, conn: conn, id: id,
		queue: make(chan *request, srv.opts.MaxPipeline),
		wake:  make(chan struct{}, 1),
		idle:  make(chan struct{}, 1),
		dead:  make(chan struct{}),
	}
	s.authed = srv.opts.RequirePass == ""
	s.pool, s.db = srv.pool, srv.pool.Upstream().DB
	s.info.db = s.db
	s.info.init(conn, id)
	s.reader = resp.NewRequestReader(conn, s.limits())
	s.out.init(conn)
	return s
}

// limits returns the request limits for the client's state. Before a client
// authenticates it may send only small requests, as Redis does, so an
// unauthenticated peer cannot make funnel buffer much.
func (s *session) limits() resp.Limits {
	l := s.srv.opts.Limits
	if !s.authed {
		l.MaxArgs = min(l.MaxArgs, 10)
		l.MaxBulk = min(l.MaxBulk, 16<<10)
	}
	return l
}

func (s *session) wakeWriter() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// kill ends the session at once for reason: it closes the socket, which
// unblocks both loops. Only the first reason counts.
func (s *session) kill(reason string) {
	s.killOnce.Do(func() {
		s.killReason.Store(reason)
		close(s.dead)
		_ = s.conn.Close()
	})
}

// serve runs the session until the client goes away, then cleans up.
func (s *session) serve() {
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		s.writeLoop()
	}()
	s.readLoop()
	if s.stickyLease != nil && s.upInFlight.Load() > 0 {
		// The client left while blocked (or with EXEC in flight on its
		// exclusive connection): as Redis does, drop the client at once
		// rather than answer a socket that is gone.
		s.kill("client_closed")
	}
	s.endExclusive()
	s.leavePubSub()
	close(s.queue)
	s.wakeWriter() // to see the queue end once every reply is sent
	<-writerDone
	s.kill("client_closed")
	s.srv.metrics.ClientsClosed.WithLabelValues(s.killReason.Load().(string)).Inc()
}

// readLoop reads commands until the client closes, errs, sends QUIT, or the
// session is killed or drained for shutdown.
func (s *session) readLoop() {
	for !s.draining.Load() {
		cmd, err := s.reader.Read()
		if err != nil {
			var pe *resp.ProtocolError
			if errors.As(err, &pe) {
				s.srv.metrics.Errors.WithLabelValues("client_protocol").Inc()
				r := newRequest(s, nil)
				r.name, r.route = "", "refused"
				r.closeAfter, r.closeReason = true, "protocol_error"
				r.Complete(redcon.AppendError(nil, "ERR "+pe.Error()), nil)
				s.enqueue(r)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.srv.log.Debug("client read", "id", s.id, "err", err)
			}
			return
		}
		r := s.route(cmd)
		if r == nil {
			continue // queued by its handler
		}
		last := r.closeAfter // r belongs to the output once queued
		if !s.enqueue(r) {
			return
		}
		if last {
			s.awaitClose()
			return
		}
	}
}

// awaitClose runs after QUIT: like Redis, funnel reads no further command,
// but it still watches the socket, so a client that hangs up while its QUIT
// waits behind a blocked command is noticed. The output closes the
// connection after QUIT's reply, which ends this.
func (s *session) awaitClose() {
	var sink [512]byte
	for {
		if _, err := s.conn.Read(sink[:]); err != nil {
			return
		}
	}
}

// enqueue puts r in line for its reply, waiting while the queue is full,
// and sends what is ready (r itself, when it was answered here). It reports
// false when the session died meanwhile.
func (s *session) enqueue(r *request) bool {
	select {
	case s.queue <- r:
	default:
		select {
		case s.queue <- r:
		case <-s.dead:
			return false
		}
	}
	s.sendReady(false)
	return true
}

// countUpstream marks r as going upstream and counts it.
func (s *session) countUpstream(r *request) {
	r.upstream = true
	if r.route == "" || r.route == "local" {
		r.route = "upstream"
	}
	s.srv.counters(r.name).upstream.Inc()
	s.srv.stats.upstreamCommands.Add(1)
	s.srv.metrics.InFlight.Inc()
}

// forward sends r upstream on the connection the ordering rule allows.
func (s *session) forward(r *request) {
	s.countUpstream(r)
	s.pool.Submit(s.ctx(), s.nextConn(r), &r.Request)
}

// nextConn returns the connection r must go on and counts r in flight: the
// client's exclusive connection if it holds one; else, while any of its
// requests are in flight, the connection they are on; else any shared one,
// since Redis has already answered everything the client sent before.
func (s *session) nextConn(r *request) *pool.Conn {
	n := s.upInFlight.Add(1)
	switch {
	case s.lease != nil:
		r.lease = s.lease
		return s.lease.conn
	case n == 1 || s.sticky == nil:
		s.sticky, s.stickyLease = s.pool.Pick(), nil
	default:
		r.lease = s.stickyLease
	}
	return s.sticky
}

// ctx returns a context that ends when the session dies.
func (s *session) ctx() context.Context { return sessionContext{s} }

// sessionContext adapts the session's dead channel to context.Context
// without a goroutine or an allocation per call.
type sessionContext struct{ s *session }

func (c sessionContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c sessionContext) Done() <-chan struct{}       { return c.s.dead }
func (c sessionContext) Value(any) any               { return nil }
func (c sessionContext) Err() error {
	if c.s.isDead() {
		return context.Canceled
	}
	return nil
}
