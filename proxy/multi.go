package proxy

import (
	"context"
	"strconv"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/resp"
)

// multiState is a transaction being queued: MULTI is answered here, each
// command is checked against the command table (by the router) and buffered,
// and EXEC sends MULTI ... EXEC as one contiguous batch on one upstream
// connection, so no other client's command can land inside it.
type multiState struct {
	raw      []byte                     // MULTI and the queued commands, in RESP
	counters []*metrics.CommandCounters // the queued commands', for the bill
	writes   []queuedWrite              // what the queued commands write, for the cache
	failed   bool                       // a queued command was rejected: EXEC answers EXECABORT
}

var (
	multiRaw   = resp.AppendCommand(nil, []byte("MULTI"))
	execRaw    = resp.AppendCommand(nil, []byte("EXEC"))
	unwatchRaw = resp.AppendCommand(nil, []byte("UNWATCH"))
	execAbort  = resp.AppendError(nil, "EXECABORT Transaction discarded because of previous errors.")
)

// queueInMulti handles a command sent between MULTI and EXEC, which the
// router has checked as Redis would (known, arity, allowed in MULTI).
func (s *session) queueInMulti(r *request) {
	m := s.multi
	r.route = routeTransaction
	switch {
	case r.spec.multi == refusedInMulti || r.spec.route == routeRefused || s.srv.denied(r.info):
		s.srv.countError(errRefused)
		s.reject(r, resp.AppendError(nil, "ERR funnel: "+displayName(r.info.Name)+" inside MULTI is not supported through the proxy"))
	case len(m.raw)+len(r.Raw) > s.srv.opts.MaxMultiBytes:
		s.reject(r, resp.AppendError(nil, "ERR funnel: transaction larger than "+strconv.Itoa(s.srv.opts.MaxMultiBytes)+" bytes (--max-multi-bytes); it will be discarded"))
	default:
		m.raw = append(m.raw, r.Raw...)
		m.counters = append(m.counters, r.counters)
		if s.srv.cache != nil {
			m.writes = append(m.writes, queuedWrite{info: r.info, args: copyArgs(r.args)})
		}
		r.completeLocal(resp.Queued)
	}
}

func cmdMulti(s *session, r *request) {
	if s.multi != nil {
		r.completeLocal(resp.AppendError(nil, "ERR MULTI calls can not be nested"))
		return
	}
	s.multi = &multiState{raw: append([]byte(nil), multiRaw...)}
	r.completeLocal(resp.OK)
}

func cmdExec(s *session, r *request) {
	m := s.multi
	if m == nil {
		r.completeLocal(resp.AppendError(nil, "ERR EXEC without MULTI"))
		return
	}
	s.multi = nil
	if m.failed {
		// Redis forgets WATCHed keys on EXECABORT too.
		s.endWatch(r, execAbort)
		return
	}
	s.sentData = true
	for _, w := range m.writes {
		s.beginWrite(r, w.info, w.args)
	}
	s.srv.metrics.Command("multi").Upstream(1)
	for _, c := range m.counters {
		c.Upstream(1)
	}
	r.rawBuf = append(m.raw, execRaw...)
	r.Raw = r.rawBuf
	r.Replies = len(m.counters) + 2
	r.route = routeTransaction
	if s.lease != nil {
		s.forwardEnding(r, nil) // EXEC ends the WATCH span
		return
	}
	s.send(r)
}

func cmdDiscard(s *session, r *request) {
	if s.multi == nil {
		r.completeLocal(resp.AppendError(nil, "ERR DISCARD without MULTI"))
		return
	}
	s.multi = nil
	s.endWatch(r, resp.OK)
}

// endWatch answers r with reply, first sending UNWATCH on the client's
// exclusive connection if it holds one, so the connection goes back clean.
func (s *session) endWatch(r *request, reply []byte) {
	if s.lease == nil {
		r.completeLocal(reply)
		return
	}
	r.counters = s.srv.metrics.Command("unwatch")
	r.rawBuf = append(r.rawBuf[:0], unwatchRaw...)
	r.Raw = r.rawBuf
	s.forwardEnding(r, reply)
}

// cmdWatch lends the client an exclusive connection for the WATCH span:
// WATCH state lives on a connection, so every command up to EXEC, DISCARD,
// UNWATCH or RESET must go to the same one. The wait for a connection runs
// on the resumer and ends with a funnel: error after Options.ExclusiveWait.
func cmdWatch(s *session, r *request) {
	if s.multi != nil {
		r.completeLocal(resp.AppendError(nil, "ERR WATCH inside MULTI is not allowed"))
		return
	}
	if s.lease != nil {
		s.watchKeys(r)
		s.send(r)
		return
	}
	s.offload(func() {
		if !s.waitIdle() {
			r.Complete(nil, errSessionClosed)
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx(), s.srv.opts.ExclusiveWait)
		l, err := s.borrow(ctx)
		cancel()
		switch {
		case s.isDead():
			if l != nil {
				l.release()
			}
			r.Complete(nil, errSessionClosed)
		case err != nil:
			r.Complete(nil, laneError(err, s.srv.opts.ExclusiveWait))
		default:
			s.lease = l
			s.watchKeys(r)
			s.send(r)
		}
	})
}

// watchKeys records the keys WATCH r names on the client's lease, so no
// write to them is absorbed while the WATCH holds.
func (s *session) watchKeys(r *request) {
	l := s.lease
	if l.watches == nil {
		l.watches, l.db = &s.srv.watches, s.db
	}
	s.srv.watches.add(s.db, r.args[1:])
	for _, k := range r.args[1:] {
		l.watched = append(l.watched, string(k))
	}
}

func cmdUnwatch(s *session, r *request) {
	if s.lease == nil {
		r.completeLocal(resp.OK) // nothing watched: Redis says OK too
		return
	}
	s.forwardEnding(r, nil)
}

// queuedWrite is a queued command kept for the cache's bookkeeping at EXEC.
type queuedWrite struct {
	info *command.Info
	args [][]byte
}

// copyArgs copies args out of the request's buffer.
func copyArgs(args [][]byte) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = append([]byte(nil), a...)
	}
	return out
}
