package proxy

import (
	"context"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/pool"
)

// forwardShared sends a command on a shared connection: from the cache or
// an identical read in flight when it may be, else upstream, in the
// client's order.
func (s *session) forwardShared(r *request) {
	if s.admission() != admitted {
		s.offload(func() {
			if !s.awaitAdmission() {
				r.Complete(nil, errSessionClosed)
				return
			}
			s.forwardShared(r)
		})
		return
	}
	r.cancellable = r.info != nil && r.info.Has(command.ReadOnly)
	switch {
	case r.info == nil:
	case r.info.Name == "publish" || r.info.Name == "spublish":
		r.adjust = adjustPublish
	case r.info.Name == "script|load":
		s.srv.scripts.learn(r.args[2]) // so EVALSHA of it may be cached
	}
	if s.tryCache(r) || s.tryAbsorb(r) {
		return
	}
	s.beginWrite(r, r.info, r.args)
	s.send(r)
}

// send sends r upstream on the connection the ordering rule allows.
func (s *session) send(r *request) {
	c := s.nextConn(r)
	s.countUpstream(r, 1)
	s.submit(c, r)
}

// countUpstream marks r as going upstream as n commands, and counts them:
// that is the bill. r reserves its client's average reply size in the
// memory budget until its reply is in (see admitted), and weighs that much
// on its connection (see pool.Pick).
func (s *session) countUpstream(r *request, n int) {
	r.upstream = true
	r.counters.Upstream(n)
	r.Duration = r.counters.UpstreamDuration()
	if avg := s.avgReply.Load(); avg > 0 {
		r.reserved, r.ReplySize = avg, avg
		s.srv.mem.reserve(avg)
	}
}

// submit queues r on c. The reader never waits for room in a connection's
// queue: if it is full, the wait moves to the resumer.
// A read that leads a flight is sent even if its client leaves meanwhile:
// other clients may have joined it.
func (s *session) submit(c *pool.Conn, r *request) {
	ctx := s.ctx()
	if r.flight != nil {
		ctx = context.Background()
	}
	if s.resuming {
		s.pool.Submit(ctx, c, &r.Request)
		s.lastConn, s.lastSeq = c, c.Enqueued()
		return
	}
	if !s.pool.TrySubmit(c, &r.Request) {
		p := s.pool
		s.offload(func() {
			p.Submit(ctx, c, &r.Request)
			s.lastConn, s.lastSeq = c, c.Enqueued()
		})
		return
	}
	s.lastConn, s.lastSeq = c, c.Enqueued()
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

// forwardAdmin sends SCRIPT KILL or FUNCTION KILL on a connection of its
// own: the script it should stop holds a shared connection busy, and
// anything queued there waits for the script to end. The client's earlier
// commands are answered first, as Redis would have run them first.
func (s *session) forwardAdmin(r *request) {
	s.offload(func() {
		if !s.waitIdle() {
			r.Complete(nil, errSessionClosed)
			return
		}
		c := s.pool.NewAdminConn()
		r.oneShot = c
		s.upInFlight.Add(1)
		s.countUpstream(r, 1)
		s.pool.Submit(s.ctx(), c, &r.Request)
	})
}
