package proxy

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// lease is a client's hold on an exclusive-lane connection. It ends in one
// of two ways, whichever comes first: released clean to the lane when the
// last request on it completes after the client is done with it (ending),
// or discarded (closed) when the client goes away mid-use.
type lease struct {
	conn   *pool.Conn
	lane   *pool.Lane
	state  atomic.Int32 // 0 active, 1 released, 2 discarded
	ending atomic.Bool  // the client sent its last command for this lease
}

func (l *lease) release() {
	if l.state.CompareAndSwap(0, 1) {
		l.lane.Return(l.conn)
	}
}

func (l *lease) discard() {
	if l.state.CompareAndSwap(0, 2) {
		l.lane.Discard(l.conn)
	}
}

// blockMargin is added to a blocking command's own timeout to get the
// longest its reply may take before funnel gives up on the connection.
const blockMargin = 5 * time.Second

// blockTimeout is where and how a blocking command states its timeout.
type blockTimeout struct {
	d       time.Duration
	forever bool // 0: block until served
	ok      bool // false: unreadable; the upstream answers with its own error
	index   int  // the argument holding it
	ms      bool // given in milliseconds rather than seconds
}

// blockingTimeout reads a blocking command's timeout from its arguments.
func blockingTimeout(name string, args [][]byte) blockTimeout {
	bt := blockTimeout{index: -1}
	switch name {
	case "blpop", "brpop", "brpoplpush", "blmove", "bzpopmin", "bzpopmax":
		bt.index = len(args) - 1
	case "blmpop", "bzmpop":
		bt.index = 1
	case "wait":
		bt.index, bt.ms = 2, true
	case "waitaof":
		bt.index, bt.ms = 3, true
	case "xread", "xreadgroup":
		for i := 1; i+1 < len(args); i++ {
			if strings.EqualFold(string(args[i]), "block") {
				bt.index, bt.ms = i+1, true
				break
			}
		}
	}
	if bt.index < 0 {
		return bt
	}
	f, err := strconv.ParseFloat(string(args[bt.index]), 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
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

// waitIdle waits until nothing of this client is in flight, so a command
// sent on another connection cannot overtake the client's earlier ones.
// It reports false if the session died meanwhile.
func (s *session) waitIdle() bool {
	for s.upInFlight.Load() > 0 {
		select {
		case <-s.idle:
		case <-s.dead:
			return false
		}
	}
	return true
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

// forwardBlocking runs a blocking command on an exclusive connection, so it
// never stalls a shared one. If no connection frees up before the command's
// own timeout, the client gets the reply Redis gives on timeout.
func (s *session) forwardBlocking(r *request, info *command.Info, args [][]byte) {
	bt := blockingTimeout(info.Name, args)
	switch {
	case !bt.ok:
		r.Timeout = 0 // the upstream rejects the timeout at once
	case bt.forever:
		r.Timeout = pool.NoTimeout
	default:
		r.Timeout = bt.d + blockMargin
	}
	if s.lease != nil { // inside a WATCH span: its connection is ours already
		s.forward(r)
		return
	}
	if !s.waitIdle() {
		r.Complete(nil, errSessionClosed)
		return
	}
	start := time.Now()
	ctx, cancel := s.deadlineCtx(bt.d, bt.forever || !bt.ok)
	defer cancel()
	l, err := s.borrow(ctx)
	if err != nil {
		if errors.Is(err, pool.ErrLaneFull) && bt.ok && !bt.forever {
			s.lastChance(r)
			return
		}
		r.Complete(nil, laneError(err))
		return
	}
	// Time spent waiting for the connection counts against the command's
	// timeout, as it would have in Redis.
	if waited := time.Since(start); bt.ok && !bt.forever && waited > time.Millisecond {
		left := bt.d - waited
		if left < time.Millisecond {
			l.release()
			s.lastChance(r)
			return
		}
		r.rawBuf = bt.withTimeout(args, left)
		r.Raw = r.rawBuf
		r.Timeout = left + blockMargin
	}
	s.lease = l
	s.forwardEnding(r, nil)
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
	r.unwrapExec = true
	s.forward(r)
}

// deadlineCtx returns a context that ends when the session dies or, unless
// forever, after d.
func (s *session) deadlineCtx(d time.Duration, forever bool) (context.Context, context.CancelFunc) {
	if forever {
		return s.ctx(), func() {}
	}
	return context.WithTimeout(s.ctx(), d)
}

// forwardEnding sends r on the lease as the client's last command of it;
// the lease is released once r and everything before it completes. reply,
// when set, replaces the upstream's reply (RESET answers +RESET after the
// UNWATCH sent for it).
func (s *session) forwardEnding(r *request, reply []byte) {
	l := s.lease
	r.override = reply
	// Count r in flight before marking the lease ending, so a completion
	// racing with this cannot release the connection under r.
	s.countUpstream(r)
	s.upInFlight.Add(1)
	l.ending.Store(true)
	s.lease = nil
	s.sticky, s.stickyLease = l.conn, l
	r.lease = l
	s.pool.Submit(s.ctx(), l.conn, &r.Request)
}

// endExclusive gives up the client's exclusive connection when it leaves:
// one still in use (blocked, or inside WATCH) is closed, never handed on.
func (s *session) endExclusive() {
	if s.lease != nil {
		s.lease.discard()
		s.lease = nil
	}
	if l := s.stickyLease; l != nil && s.upInFlight.Load() > 0 {
		l.discard()
	}
}

var errSessionClosed = errors.New("funnel: client connection closed")

func laneError(err error) error {
	return errors.New("funnel: " + strings.TrimPrefix(err.Error(), "pool: ") + "; raise --max-exclusive or retry")
}
