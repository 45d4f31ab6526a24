package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// session is one client connection. Its loop (loop.go) reads and parses
// its commands and never waits on the upstream: each command is queued on
// the output at once, in arrival order, and dispatched (routed and sent)
// right there unless an earlier command is waiting for something (a lane
// connection, the client's in-flight commands, a fetch); then it is parked
// and a resumer goroutine dispatches the parked ones in order (dispatch.go).
// So a departure is noticed at once, and a command that never left funnel
// is cancelled rather than run for nobody. An idle session has no
// goroutine and no buffer.
type session struct {
	srv    *Server
	sock   clientSocket
	id     int64
	out    output
	reader *resp.RequestReader
	// rs is where reading the client stands; owned by the loop.
	rs readState

	// dead is closed when the session must end at once.
	dead     chan struct{}
	killOnce sync.Once
	reason   atomic.Uint32 // closeReason
	draining atomic.Bool   // set by Shutdown: stop reading new commands
	// batching is set while the loop handles commands one read brought,
	// and more of them are buffered: replies funnel makes itself wait in
	// the output's buffer until the last, so a pipeline gets them in one
	// write, and a cross-protocol line drops the replies of the commands
	// read with it, as in Redis, which writes after each read.
	batching atomic.Bool

	// The dispatch hand-off between the reader and the resumer; see
	// dispatch.go. mu guards parked, and suspended's changes: only the
	// reader sets suspended, so the reader may read it without mu (see
	// input).
	mu        sync.Mutex
	parked    []*request
	suspended atomic.Bool
	// resuming is set while the resumer dispatches; only the dispatching
	// goroutine reads or writes it.
	resuming bool
	// resumers tracks the resumer, which the session's end waits for: it
	// owns the client state until it hands dispatching back.
	resumers sync.WaitGroup
	// awaitingRoom is set while reading is paused because the client has
	// Options.MaxPipeline commands without replies. No goroutine waits:
	// whoever makes room (a reply written, a drain) clears it and posts
	// the resume (roomMade).
	awaitingRoom atomic.Bool

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
	// readKeyBuf is scratch for the cache's name of a read.
	readKeyBuf []byte
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
	// progress is signalled when a request of the client's completes, or a
	// reply of its is written, while waitingProgress is set (see
	// awaitProgress).
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

// newSession makes the session of conn, whose socket it takes over (see
// takeSocket); the caller hands it to a loop.
func newSession(srv *Server, conn net.Conn, id int64, l *loop) (*session, error) {
	s := &session{
		srv: srv, id: id,
		dead:     make(chan struct{}),
		progress: make(chan struct{}, 1),
	}
	s.authed = srv.opts.RequirePass == ""
	s.pool, s.db = srv.pool, srv.pool.Upstream().DB
	s.info.db = s.db
	s.info.init(conn, id)
	fd, err := takeSocket(conn)
	if err != nil {
		return nil, err
	}
	s.sock = clientSocket{fd: fd, loop: l, readBytes: &srv.metrics.ClientRead}
	s.reader = resp.NewRequestReader(&s.sock, s.limits())
	s.reader.SetBudget(readerBudget{s})
	s.reader.SetBeforeRead(s.endBatch)
	s.out.init(s)
	return s, nil
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

// kill ends the session at once for reason: it shuts the socket down and
// has the loop close it, which cancels parked commands and their waits,
// and drops the replies still to come. Only the first reason counts.
func (s *session) kill(reason closeReason) {
	s.killOnce.Do(func() {
		s.reason.Store(uint32(reason))
		close(s.dead)
		s.sock.shutdown()
		s.sock.loop.post(loopTask{kind: closeClient, s: s})
	})
}

func (s *session) isDead() bool { return isClosed(s.dead) }

// finish cleans up once the loop has closed the socket: nothing reads the
// client any more, so no command can start a wait after the ones it ends.
func (s *session) finish() {
	defer s.srv.wg.Done()
	s.resumers.Wait()
	s.srv.mem.forget(s) // a reading paused for memory
	s.cancelParked()
	s.endExclusive()
	s.leavePubSub()
	s.out.shutQueue()
	reason := closeReason(s.reason.Load())
	s.srv.metrics.ClientsClosed.WithLabelValues(reason.String()).Inc()
	if advice := reason.advice(); advice != "" {
		s.srv.log.Warn("client closed: "+advice, "id", s.id, "addr", s.info.addr, "reason", reason.String())
	} else {
		s.srv.log.Debug("client closed", "id", s.id, "addr", s.info.addr, "reason", reason.String())
	}
	s.srv.mu.Lock()
	delete(s.srv.sessions, s.id)
	s.srv.mu.Unlock()
	s.srv.metrics.ClientConnections.Dec()
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
// now is the time the output took once for the replies it sent together.
func (s *session) replySent(r *request, now time.Time) {
	s.srv.latency[r.route].Observe(now.Sub(r.start).Seconds())
	if r.err == nil {
		s.pendingOut.Add(-int64(len(r.replyBytes())))
		s.signalProgress() // its share has room again
	}
	switch r.pubsubKind {
	case confirmsSubscription:
		s.unconfirmedSubs.Add(-1)
	case queuedPush:
		s.queuedPushes.Add(-1)
	}
	r.release()
	if s.hasRoom() {
		s.roomMade()
	}
}

// hasRoom reports whether a client paused for room may be read again: its
// commands without replies fell to half of MaxPipeline, so it is not
// resumed and paused again for every reply.
func (s *session) hasRoom() bool {
	return int(s.out.queued.Load()) < s.srv.opts.MaxPipeline/2+1
}

// roomMade resumes reading a client paused for room, once.
func (s *session) roomMade() {
	if s.awaitingRoom.Load() && s.awaitingRoom.CompareAndSwap(true, false) {
		s.sock.loop.post(loopTask{kind: resumeClient, s: s})
	}
}

// upstreamDone is called when a request of the client's that was sent
// upstream completes with a reply of n bytes.
func (s *session) upstreamDone(r *request, n int) {
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
	s.signalProgress()
}

// signalProgress wakes the client's resumer if it waits for the client's
// own progress (see awaitProgress and awaitAdmission).
func (s *session) signalProgress() {
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
