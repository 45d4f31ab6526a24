package proxy

import (
	"strconv"
	"strings"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/resp"
)

// multiState is a transaction being queued: MULTI is answered here, each
// command is checked against the command table and buffered, and EXEC sends
// MULTI ... EXEC as one contiguous batch on one upstream connection, so no
// other client's command can land inside it.
type multiState struct {
	raw    []byte        // MULTI and the queued commands, in RESP
	names  []string      // queued command names, for metrics
	writes []queuedWrite // what the queued commands write, for the cache
	failed bool          // a queued command was rejected: EXEC answers EXECABORT
}

var (
	multiRaw   = resp.AppendCommand(nil, []byte("MULTI"))
	execRaw    = resp.AppendCommand(nil, []byte("EXEC"))
	unwatchRaw = resp.AppendCommand(nil, []byte("UNWATCH"))
	replyQueue = []byte("+QUEUED\r\n")
	execAbort  = errReply("EXECABORT Transaction discarded because of previous errors.")
)

// notInMulti lists local commands that change the connection's state; inside
// a transaction they would act on the shared upstream connection, so funnel
// rejects them there (and the transaction aborts).
var notInMulti = map[string]bool{"select": true, "auth": true, "hello": true, "client": true}

// queueInMulti handles a command sent between MULTI and EXEC.
func (s *session) queueInMulti(r *request, info *command.Info, name string, args [][]byte) {
	m := s.multi
	reject := func(reply []byte) {
		m.failed = true
		r.Complete(reply, nil)
	}
	switch {
	case info == nil:
		reject(errReply("ERR unknown command '" + resp.Quote(args[0], 128) + "', with args beginning with: " + argsPreview(args[1:])))
	case !info.CheckArity(args):
		reject(arityError(name))
	case refused[name] || s.srv.denied[name] || s.srv.denied[baseName(name)] || notInMulti[baseName(name)] || info.Has(command.PubSub):
		s.srv.metrics.Errors.WithLabelValues("refused").Inc()
		reject(errReply("ERR funnel: " + displayName(name) + " inside MULTI is not supported through the proxy"))
	case len(m.raw)+len(r.Raw) > s.srv.opts.MaxMultiBytes:
		reject(errReply("ERR funnel: transaction larger than " + strconv.Itoa(s.srv.opts.MaxMultiBytes) + " bytes; it will be discarded"))
	default:
		m.raw = append(m.raw, r.Raw...)
		m.names = append(m.names, name)
		if s.srv.cache != nil {
			m.writes = append(m.writes, queuedWrite{info: info, args: copyArgs(args)})
		}
		r.Complete(replyQueue, nil)
	}
}

// argsPreview formats arguments as Redis's unknown-command error does.
func argsPreview(args [][]byte) string {
	var b strings.Builder
	for _, a := range args {
		if b.Len() >= 128 {
			break
		}
		b.WriteString("'" + resp.Quote(a, 128) + "' ")
	}
	return b.String()
}

func displayName(name string) string {
	return strings.ToUpper(strings.ReplaceAll(name, "|", " "))
}

func cmdMulti(s *session, r *request, args [][]byte) {
	if s.multi != nil {
		r.Complete(errReply("ERR MULTI calls can not be nested"), nil)
		return
	}
	s.multi = &multiState{raw: append([]byte(nil), multiRaw...)}
	r.Complete(replyOK, nil)
}

func cmdExec(s *session, r *request, args [][]byte) {
	m := s.multi
	if m == nil {
		r.Complete(errReply("ERR EXEC without MULTI"), nil)
		return
	}
	s.multi = nil
	if m.failed {
		// Redis forgets WATCHed keys on EXECABORT too.
		s.endWatch(r, execAbort)
		return
	}
	for _, w := range m.writes {
		s.invalidate(w.info, w.args)
	}
	s.srv.counters("multi").upstream.Inc()
	for _, name := range m.names {
		s.srv.counters(name).upstream.Inc()
	}
	r.rawBuf = append(m.raw, execRaw...)
	r.Raw = r.rawBuf
	r.Replies = len(m.names) + 2
	r.route = "transaction"
	if s.lease != nil {
		s.forwardEnding(r, nil) // EXEC ends the WATCH span
		return
	}
	s.forward(r)
}

func cmdDiscard(s *session, r *request, args [][]byte) {
	if s.multi == nil {
		r.Complete(errReply("ERR DISCARD without MULTI"), nil)
		return
	}
	s.multi = nil
	s.endWatch(r, replyOK)
}

// endWatch answers r with reply, first sending UNWATCH on the client's
// exclusive connection if it holds one, so the connection goes back clean.
func (s *session) endWatch(r *request, reply []byte) {
	if s.lease == nil {
		r.Complete(reply, nil)
		return
	}
	r.name = "unwatch"
	r.rawBuf = append(r.rawBuf[:0], unwatchRaw...)
	r.Raw = r.rawBuf
	s.forwardEnding(r, reply)
}

// cmdWatch lends the client an exclusive connection for the WATCH span:
// WATCH state lives on a connection, so every command up to EXEC, DISCARD,
// UNWATCH or RESET must go to the same one.
func cmdWatch(s *session, r *request, args [][]byte) {
	if s.multi != nil {
		r.Complete(errReply("ERR WATCH inside MULTI is not allowed"), nil)
		return
	}
	if s.lease == nil {
		if !s.waitIdle() {
			r.Complete(nil, errSessionClosed)
			return
		}
		ctx, cancel := s.deadlineCtx(s.pool.Timeout(), false)
		l, err := s.borrow(ctx)
		cancel()
		if err != nil {
			r.Complete(nil, laneError(err))
			return
		}
		s.lease = l
	}
	s.forward(r)
}

func cmdUnwatch(s *session, r *request, args [][]byte) {
	if s.lease == nil {
		r.Complete(replyOK, nil) // nothing watched: Redis says OK too
		return
	}
	s.forwardEnding(r, nil)
}

// queuedWrite is a queued command kept for invalidation at EXEC.
type queuedWrite struct {
	info *command.Info
	args [][]byte
}

// copyArgs copies args out of the reader's buffer.
func copyArgs(args [][]byte) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = append([]byte(nil), a...)
	}
	return out
}
