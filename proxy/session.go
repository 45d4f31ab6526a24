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
)

// session is one client connection. Its reader goroutine reads and parses
// commands and never waits on the upstream: each command is queued on the
// output at once, in arrival order, and dispatched (routed and sent) right
// there unless an earlier command is waiting for something (a lane
// connection, the client's in-flight commands, a fetch); then it is parked
// and a resumer goroutine dispatches the parked ones in order (dispatch.go).
// So a departure is noticed at once, and a command that never left funnel
// is cancelled rather than run for nobody.
type session struct {
	srv    *Server
	conn   net.Conn
	id     int64
	out    output
	reader *resp.RequestReader

	// dead is closed when the session must end at once.
	dead     chan struct{}
	killOnce sync.Once
	reason   atomic.Uint32 // closeReason
	draining atomic.Bool   // set by Shutdown: stop reading new commands
	// batching is set while the reader handles commands one read brought,
	// and more of them are buffered: replies funnel makes itself wait in
	// the output's buffer until the last, so a pipeline gets them in one
	// write, and a cross-protocol line drops the replies of the commands
	// read with it, as in Redis, which writes after each read.
	batching atomic.Bool

	// The dispatch hand-off between the reader and the resumer; see
	// dispatch.go. mu guards parked and suspended.
	mu        sync.Mutex
	parked    []*request
	suspended bool
	// resuming is set while the resumer dispatches; only the dispatching
	// goroutine reads or writes it.
	resuming bool
	// resumers tracks the resumer, which the session's end waits for: it
	// owns the client state until it hands dispatching back.
	resumers sync.WaitGroup
	// room wakes a reader that stopped because the client has
	// Options.MaxPipeline commands without replies.
	room chan struct{}

	// Client state, owned by whichever goroutine dispatches.
	sticky *pool.Conn
	// stickyLease is the lease of sticky when it is an exclusive connection
	// the client is finishing with; requests sent there carry it, so the
	// last to complete releases the connection.
	stickyLease *lease
	// lease is the exclusive connection the client holds now (WATCH span,
	// blocking command being routed); while set, everything goes there.
	lease *lease
	// multi buffers a transaction between MULTI and EXEC.
	multi *multiState
	// subs are the client's pub/sub subscriptions; any puts it in
	// subscribed mode.
	subs map[subKey]bool
	// db is the client's selected db, and pool the pool that serves it.
	db        int
	pool      *pool.Pool
	authed    bool
	replyMode replyMode
	// sentData is set once the client sent a command other than the
	// handshake's (see cmdInfo).
	sentData bool
	// lastConn and lastSeq say where the client's last request to a shared
	// connection was queued (see CanJoin).
	lastConn *pool.Conn
	lastSeq  uint64
	// keyPos and keyArgs are scratch for the cache, reused per command.
	keyPos  []int
	keyArgs [][]byte
	// blocking is the client's blocking command waiting for a lane
	// connection or blocked upstream, for CLIENT UNBLOCK; guarded by mu.
	blocking *blockingWait

	// Counters shared with the goroutines that complete requests.
	// pendingOut counts reply bytes held for this client and not yet
	// written; over Options.ClientOutputLimit the client is closed.
	pendingOut atomic.Int64
	// upInFlight counts this client's requests sent upstream and not yet
	// answered. While it is above zero, new requests go to sticky, the
	// connection they are on, so Redis runs them in the client's order.
	upInFlight atomic.Int64
	// progress is signalled when a request of the client's completes while
	// waitingProgress is set (see awaitProgress).
	progress        chan struct{}
	waitingProgress atomic.Bool
	// avgReply is a moving average of this client's upstream reply sizes,
	// which sizes its in-flight window (see window).
	avgReply atomic.Int64
	// unconfirmedSubs counts SUBSCRIBE replies, and queuedPushes messages,
	// queued and not yet sent; while either is above zero a RESP3 push
	// waits in line (see pushDirect).
	unconfirmedSubs, queuedPushes atomic.Int64

	// info is what CLIENT LIST shows; it guards what other sessions read.
	info clientInfo
}

func newSession(srv *Server, conn net.Conn, id int64) *session {
	s := &session{
		srv: srv, conn: conn, id: id,
		dead:     make(chan struct{}),
		room:     make(chan struct{}, 1),
		progress: make(chan struct{}, 1),
	}
	s.authed = srv.opts.RequirePass == ""
	s.pool, s.db = srv.pool, srv.pool.Upstream().DB
	s.info.db = s.db
	s.info.init(conn, id)
	s.reader = resp.NewRequestReader(countedReader{conn, &srv.metrics.ClientRead}, s.limits())
	s.reader.SetBudget(readerBudget{s})
	s.reader.SetBeforeRead(s.endBatch)
	s.out.init(s, conn)
	return s
}

// limits returns the request limits for the client's state: before a
// client authenticates it may send only small requests, as Redis does, so
// an unauthenticated peer cannot make funnel buffer much.
func (s *session) limits() resp.Limits {
	l := s.srv.opts.Limits
	l.Unauthenticated = !s.authed
	return l
}

func (s *session) setAuthed(ok bool) {
	s.authed = ok
	s.reader.SetLimits(s.limits())
}

// kill ends the session at once for reason: it closes the socket, which
// ends the reader, cancels parked commands and their waits, and drops the
// replies still to come. Only the first reason counts.
func (s *session) kill(reason closeReason) {
	s.killOnce.Do(func() {
		s.reason.Store(uint32(reason))
		close(s.dead)
		_ = s.conn.Close()
	})
}

func (s *session) isDead() bool { return isClosed(s.dead) }

// serve runs the reader until the client goes away or the session ends,
// then cleans up.
func (s *session) serve() {
	departed := s.readLoop()
	if departed {
		// As Redis does when a client hangs up: drop it at once, replies
		// still due included, and unblock its blocking command.
		s.kill(closedByClient)
	}
	<-s.dead // the output closes the client after its last reply, or Shutdown's deadline does
	s.resumers.Wait()
	s.cancelParked()
	s.endExclusive()
	s.leavePubSub()
	s.out.shutQueue()
	s.reader.Close()
	reason := closeReason(s.reason.Load())
	s.srv.metrics.ClientsClosed.WithLabelValues(reason.String()).Inc()
	if advice := reason.advice(); advice != "" {
		s.srv.log.Warn("client closed: "+advice, "id", s.id, "addr", s.info.addr, "reason", reason.String())
	} else {
		s.srv.log.Debug("client closed", "id", s.id, "addr", s.info.addr, "reason", reason.String())
	}
}

// readLoop reads and inputs commands until the client hangs up (it reports
// true), sends QUIT, errs, or the session is killed or drained.
func (s *session) readLoop() (departed bool) {
	defer s.srv.recoverPanic(s)
	for {
		if s.draining.Load() {
			s.out.drainThenClose()
			return false
		}
		if int(s.out.queued.Load()) >= s.srv.opts.MaxPipeline && !s.awaitRoom() {
			return false
		}
		cmd, err := s.reader.Read()
		if err != nil {
			s.endBatch()
			return s.readFailed(err)
		}
		s.batching.Store(true)
		last := s.input(cmd)
		if last || s.reader.Buffered() == 0 {
			s.endBatch()
		}
		if last {
			return s.awaitClose()
		}
	}
}

// endBatch ends the reader's batch (see batching): it writes the replies
// that waited for it. The reader calls it before anything that may block.
func (s *session) endBatch() {
	if s.batching.Swap(false) {
		s.out.kick(true)
	}
}

// awaitRoom waits, as backpressure, until the client's queue of commands
// without replies has room again. It reports false if the session died.
func (s *session) awaitRoom() bool {
	s.endBatch()
	for int(s.out.queued.Load()) >= s.srv.opts.MaxPipeline {
		select {
		case <-s.room:
		case <-s.dead:
			return false
		}
	}
	return true
}

// readFailed handles the end of the reader: a protocol error gets Redis's
// reply and closes; shutdown drains; anything else is the client leaving.
func (s *session) readFailed(err error) (departed bool) {
	var pe *resp.ProtocolError
	switch {
	case errors.As(err, &pe):
		s.srv.countError(errClientProtocol)
		s.queueFinal(resp.AppendError(nil, "ERR "+pe.Error()), closedProtocol)
		return s.awaitClose()
	case errors.Is(err, errMemory):
		s.queueFinal(resp.AppendError(nil, "ERR "+err.Error()), closedMemory)
		return s.awaitClose()
	case s.draining.Load():
		s.out.drainThenClose()
		return false
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	default:
		s.srv.log.Debug("client read", "id", s.id, "err", err)
	}
	return !s.isDead()
}

// queueFinal queues a reply funnel made after everything before it, and
// closes the client once it is written.
func (s *session) queueFinal(reply []byte, reason closeReason) {
	r := newReply(s, routeRefused)
	r.closeAfter = reason
	if s.out.push(r) {
		r.completeLocal(reply)
	}
}

// awaitClose runs after QUIT or a protocol error: like Redis, funnel reads
// no further command, but it still watches the socket, so a client that
// hangs up while its QUIT waits behind a blocked command is noticed. The
// output closes the connection after the last reply, which ends this.
func (s *session) awaitClose() (departed bool) {
	var sink [512]byte
	for {
		if _, err := s.conn.Read(sink[:]); err != nil {
			if s.draining.Load() && !s.isDead() {
				s.out.drainThenClose()
				<-s.dead
			}
			return !s.isDead()
		}
	}
}

// held records that n more reply bytes are held for the client.
func (s *session) held(n int64) {
	if s.pendingOut.Add(n) > s.srv.live().outputLimit {
		// The client is not reading its replies fast enough: cut it off
		// instead of letting its backlog grow without bound.
		s.kill(closedOutputLimit)
	}
}

// replySent is called by the output for each request it took off its
// queue, written or suppressed, and recycles it.
func (s *session) replySent(r *request) {
	s.srv.latency[r.route].Observe(time.Since(r.start).Seconds())
	if r.err == nil {
		s.pendingOut.Add(-int64(len(r.replyBytes())))
	}
	switch r.pubsubKind {
	case confirmsSubscription:
		s.unconfirmedSubs.Add(-1)
	case queuedPush:
		s.queuedPushes.Add(-1)
	}
	r.release()
	if int(s.out.queued.Load()) < s.srv.opts.MaxPipeline/2+1 {
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
}

// upstreamDone is called when a request of the client's that was sent
// upstream completes with a reply of n bytes.
func (s *session) upstreamDone(r *request, n int) {
	s.srv.metrics.InFlight.Dec()
	if avg := s.avgReply.Load(); avg == 0 {
		s.avgReply.Store(int64(n) + 1)
	} else {
		s.avgReply.Store(avg + (int64(n)+1-avg)/8)
	}
	if s.upInFlight.Add(-1) == 0 {
		if l := r.lease; l != nil && l.ending.Load() {
			l.release()
		}
	}
	if s.waitingProgress.Load() {
		select {
		case s.progress <- struct{}{}:
		default:
		}
	}
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

// isClosed reports whether ch is closed, without waiting.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
