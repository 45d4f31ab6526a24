package proxy

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// lease is a client's hold on an exclusive-lane connection. It ends in one
// of two ways, whichever comes first: released clean to the lane when the
// last request on it completes after the client is done with it (ending),
// or discarded (closed) when the client goes away mid-use. A client that
// goes away while its blocking command waits upstream has that command
// ended with CLIENT UNBLOCK instead, and the lease is held meanwhile (see
// unblockDeparted), so the connection goes back to the lane only once the
// UNBLOCK is answered and can reach no one else's command.
type lease struct {
	conn   *pool.Conn
	lane   *pool.Lane
	state  atomic.Int32 // 0 active, 1 released, 2 discarded
	ending atomic.Bool  // the client sent its last command for this lease
	// held defers release until unhold; wantRelease records a release
	// that came meanwhile. Guarded by mu.
	mu          sync.Mutex
	held        bool
	wantRelease bool
	// watched are the keys WATCHed on it, in db, counted in watches until
	// the lease ends (the WATCH state ends with it upstream).
	watched []string
	db      int
	watches *watchSet
}

func (l *lease) release() {
	l.mu.Lock()
	if l.held {
		l.wantRelease = true
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	if l.state.CompareAndSwap(0, 1) {
		l.unwatch()
		l.lane.Return(l.conn)
	}
}

// hold keeps release from giving the connection back until unhold.
func (l *lease) hold() {
	l.mu.Lock()
	l.held = true
	l.mu.Unlock()
}

// unhold ends hold, and releases the lease if a release came meanwhile.
func (l *lease) unhold() {
	l.mu.Lock()
	l.held = false
	want := l.wantRelease
	l.mu.Unlock()
	if want {
		l.release()
	}
}

func (l *lease) discard() {
	if l.state.CompareAndSwap(0, 2) {
		l.unwatch()
		l.lane.Discard(l.conn)
	}
}

func (l *lease) unwatch() {
	if len(l.watched) > 0 {
		l.watches.remove(l.db, l.watched)
	}
}

// blockMargin is added to a blocking command's own timeout to get the
// longest its reply may take before funnel gives up on the connection.
const blockMargin = 5 * time.Second

// blockTimeout is a blocking command's timeout, read from its arguments.
type blockTimeout struct {
	d       time.Duration
	forever bool // 0: block until served
	ok      bool // false: funnel cannot read it; it may block for ever, or Redis rejects it at once
	index   int  // the argument holding it
	ms      bool // given in milliseconds rather than seconds
}

// blockingTimeout reads a blocking command's timeout where its row in the
// table says it is. The index is checked, though the arity check already
// guarantees it, so no input can make it panic.
func blockingTimeout(t timeoutArg, args [][]byte) blockTimeout {
	bt := blockTimeout{index: -1, ms: t.ms}
	switch t.kind {
	case timeoutLast:
		bt.index = len(args) - 1
	case timeoutAt:
		bt.index = t.index
	case timeoutAfterBlock:
		if i, ok := blockIndex(args); ok {
			bt.index = i
		}
	}
	if bt.index < 1 || bt.index >= len(args) {
		return bt
	}
	if len(args[bt.index]) > 64 {
		return bt // no timeout is that long; and no argument is copied to find out
	}
	f, err := strconv.ParseFloat(string(args[bt.index]), 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f > float64(math.MaxInt64/int64(time.Second)) {
		return bt
	}
	bt.ok = true
	if f == 0 {
		bt.forever = true
		return bt
	}
	if !bt.ms {
		f *= 1000
	}
	bt.d = time.Duration(f * float64(time.Millisecond))
	return bt
}

// withTimeout returns the command with its timeout argument set to d, for a
// command that spent part of its timeout waiting for a connection.
func (bt blockTimeout) withTimeout(args [][]byte, d time.Duration) []byte {
	v := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	if bt.ms {
		v = strconv.FormatInt(d.Milliseconds(), 10)
	}
	out := make([][]byte, len(args))
	copy(out, args)
	out[bt.index] = []byte(v)
	return resp.AppendCommand(nil, out...)
}

// unblockMode is how CLIENT UNBLOCK ends a blocked command.
type unblockMode uint8

const (
	unblockTimeout unblockMode = iota + 1 // as if its timeout passed
	unblockError                          // with -UNBLOCKED
)

// errUnblocked is the cause of a lane wait that CLIENT UNBLOCK ended.
type errUnblocked struct{ mode unblockMode }

func (e errUnblocked) Error() string { return "unblocked via CLIENT UNBLOCK" }

// blockingWait is a client's blocking command, from when it starts waiting
// for a lane connection until it completes, for CLIENT UNBLOCK.
type blockingWait struct {
	cancel context.CancelCauseFunc // ends the lane wait
	lease  *lease                  // set once the command is sent: it blocks upstream there
}

// forwardBlocking runs a blocking command on an exclusive connection, so it
// never stalls a shared one. The wait for a connection happens on the
// resumer, so a client that leaves meanwhile is noticed and its command
// cancelled before it is sent: it never pops an element for nobody. If no
// connection frees up before the command's own timeout, the client gets
// what Redis gives on timeout; a longer wait ends after
// Options.ExclusiveWait with a funnel: error.
func (s *session) forwardBlocking(r *request) {
	bt := blockingTimeout(r.spec.timeout, r.args)
	r.cancellable = true
	switch {
	case !bt.ok || bt.forever:
		r.Timeout = pool.NoTimeout
	default:
		r.Timeout = bt.d + blockMargin
	}
	if s.lease != nil { // inside a WATCH span: its connection is ours already
		s.beginWrite(r, r.info, r.args)
		s.send(r)
		return
	}
	r.blocked = true
	s.srv.blockedClients.Add(1)
	if end, ok := popEndOf(r.info.Name, r.args); ok {
		// What is popped for this client after it left goes back.
		srv, p, name := s.srv, s.pool, r.info.Name
		r.undelivered = func(reply []byte) { putBack(srv, p, name, end, reply) }
	}
	ctx, cancel := context.WithCancelCause(s.ctx())
	bw := &blockingWait{cancel: cancel}
	s.mu.Lock()
	s.blocking = bw
	s.mu.Unlock()
	if key, ok := s.shareable(r, bt); ok {
		s.offload(func() {
			defer cancel(nil)
			s.waitShared(ctx, r, key, bt, bw)
		})
		return
	}
	s.offload(func() {
		defer cancel(nil)
		s.borrowAndSend(ctx, r, bt, bw)
	})
}

// borrowAndSend waits for the client's earlier commands, then for a lane
// connection, and sends r there.
func (s *session) borrowAndSend(ctx context.Context, r *request, bt blockTimeout, bw *blockingWait) {
	if !s.awaitProgress(func() bool { return s.upInFlight.Load() == 0 || ctx.Err() != nil }, ctx.Done()) {
		s.endBlocking(bw)
		r.Complete(nil, errSessionClosed)
		return
	}
	limit := s.srv.opts.ExclusiveWait
	finite := bt.ok && !bt.forever
	wait := limit
	if finite && bt.d < limit {
		wait = bt.d
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, wait)
	l, err := s.borrow(wctx)
	cancel()
	var unblocked errUnblocked
	switch {
	case errors.As(context.Cause(ctx), &unblocked):
		if l != nil {
			l.release()
		}
		s.endBlocking(bw)
		if unblocked.mode == unblockError {
			r.completeLocal(resp.AppendError(nil, "UNBLOCKED client unblocked via CLIENT UNBLOCK"))
			return
		}
		s.lastChance(r)
	case s.isDead():
		if l != nil {
			l.release()
		}
		s.endBlocking(bw)
		r.Complete(nil, errSessionClosed)
	case err != nil && errors.Is(err, pool.ErrLaneFull) && finite && bt.d <= limit:
		s.endBlocking(bw)
		s.lastChance(r)
	case err != nil:
		s.endBlocking(bw)
		r.Complete(nil, laneError(err, limit))
	default:
		// Time spent waiting for the connection counts against the
		// command's timeout, as it would have in Redis.
		if waited := time.Since(start); finite && waited > time.Millisecond {
			left := bt.d - waited
			if left < time.Millisecond {
				l.release()
				s.endBlocking(bw)
				s.lastChance(r)
				return
			}
			r.rawBuf = bt.withTimeout(r.args, left)
			r.Raw = r.rawBuf
			r.Timeout = left + blockMargin
		}
		s.mu.Lock()
		bw.lease = l
		s.mu.Unlock()
		r.wait = bw
		s.lease = l
		s.beginWrite(r, r.info, r.args)
		s.forwardEnding(r, nil)
	}
}

// endBlocking forgets bw as the client's blocking command.
func (s *session) endBlocking(bw *blockingWait) {
	s.mu.Lock()
	if s.blocking == bw {
		s.blocking = nil
	}
	s.mu.Unlock()
}

// borrow leases an exclusive connection, waiting until ctx ends.
func (s *session) borrow(ctx context.Context) (*lease, error) {
	lane := s.pool.Lane()
	c, err := lane.Borrow(ctx)
	if err != nil {
		return nil, err
	}
	return &lease{conn: c, lane: lane}, nil
}

// lastChance answers a blocking command whose timeout passed while it waited
// for an exclusive connection. Inside MULTI ... EXEC Redis runs a blocking
// command without blocking, so that batch, on a shared connection, gives
// exactly what Redis would have answered at the deadline: the element if one
// is there by now, else the timeout reply.
func (s *session) lastChance(r *request) {
	r.rawBuf = append(append(append([]byte(nil), multiRaw...), r.Raw...), execRaw...)
	r.Raw = r.rawBuf
	r.Replies = 3
	r.Timeout = 0
	r.adjust = adjustUnwrap
	// r.args still point into the old bytes, which they keep alive.
	s.beginWrite(r, r.info, r.args)
	s.send(r)
}

// forwardEnding sends r on the lease as the client's last command of it;
// the lease is released once r and everything before it completes. reply,
// when set, replaces the upstream's reply (RESET answers +RESET after the
// UNWATCH sent for it).
func (s *session) forwardEnding(r *request, reply []byte) {
	l := s.lease
	if reply != nil {
		r.override, r.adjust = reply, adjustOverride
	}
	// Count r in flight before marking the lease ending, so a completion
	// racing with this cannot release the connection under r.
	s.countUpstream(r, 1)
	s.upInFlight.Add(1)
	l.ending.Store(true)
	s.lease = nil
	s.sticky, s.stickyLease = l.conn, l
	r.lease = l
	s.pool.Submit(s.ctx(), l.conn, &r.Request)
}

// endExclusive gives up the client's exclusive connection when it leaves:
// one still in use inside WATCH is closed, never handed on; one whose
// blocking command still waits upstream has it ended (unblockDeparted).
func (s *session) endExclusive() {
	if s.lease != nil {
		s.lease.discard()
		s.lease = nil
	}
	if l := s.stickyLease; l != nil && s.upInFlight.Load() > 0 && !s.unblockDeparted(l) {
		l.discard()
	}
}

// unblockDeparted ends the blocking command that a departed client left
// waiting upstream on l, with CLIENT UNBLOCK on another connection, and
// reports whether it sent one. Closing l would end it too, but Redis may
// serve the command an element before it sees the close, and that element
// would be popped for nobody; this way an element that comes first is
// answered to the dead session, which puts it back (request.undelivered),
// and l goes back to the lane clean once the UNBLOCK is answered (held
// until then, so the UNBLOCK can reach no other client's command).
func (s *session) unblockDeparted(l *lease) bool {
	s.mu.Lock()
	bw := s.blocking
	s.mu.Unlock()
	id := l.conn.UpstreamID()
	if bw == nil || bw.lease != l || id == 0 {
		return false
	}
	l.hold()
	srv, p := s.srv, s.pool
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		defer l.unhold()
		raw := resp.AppendCommand(nil, []byte("CLIENT"), []byte("UNBLOCK"), strconv.AppendInt(nil, id, 10), []byte("TIMEOUT"))
		if _, err := srv.fetch(p, "client|unblock", raw); err != nil {
			l.discard() // the command may still wait: close it
		}
	}()
	return true
}

func laneError(err error, wait time.Duration) error {
	msg := strings.TrimPrefix(err.Error(), "pool: ")
	return errors.New("funnel: " + msg + " within " + wait.String() + " (--exclusive-wait); raise --max-exclusive or retry")
}
