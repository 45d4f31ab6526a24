package proxy

import (
	"errors"
	"strings"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/resp"
)

// route decides how r is answered, applying the checks redis-server makes
// before it runs a command, in its order (server.c, processCommand): a
// cross-protocol attack closes the client; an unknown command, a wrong
// argument count, NOAUTH, a command not allowed in MULTI or in RESP2
// subscribed mode each get Redis's own error from funnel, so no handler
// ever sees arguments the command table did not check. Then funnel's own
// rules: MULTI queueing, refused commands, and the route of the table.
func (s *session) route(r *request) {
	args := r.args
	if isCrossProtocol(args[0]) {
		// Nothing after this line is read (see input). The client is
		// closed, with no reply to the line, once what it sent before is
		// answered: Redis runs those commands before it closes, so a write
		// sent before the line has landed by the time the connection ends.
		s.srv.crossProtocol(s)
		r.closeAfter = closedCrossProtocol
		r.completeLocal(nil)
		return
	}
	info, container := command.Resolve(args)
	r.info = info
	switch {
	case !s.authed && (info == nil || !info.Has(command.NoAuth)):
		r.counters = s.srv.metrics.Command(metrics.Unauthenticated)
	case info == nil:
		r.counters = s.srv.metrics.Command(metrics.UnknownCommand)
	default:
		r.counters = s.srv.metrics.CommandOf(info)
	}
	r.counters.Client()
	s.info.setLastCommand(info, r.start)
	r.suppress = s.replyMode.suppresses()
	s.replyMode = s.replyMode.next()
	r.spec = sharedSpec
	if info != nil {
		r.spec = routeOf(info)
	}

	switch {
	case info == nil && (!s.authed || s.multi != nil || container != nil && container.Name == "client"):
		// Before AUTH nothing reaches the upstream, and inside MULTI the
		// transaction must know; after AUTH an unknown command or
		// subcommand is the upstream's to judge (a newer Redis, a module),
		// but never an unknown CLIENT subcommand, which could act on a
		// shared connection.
		s.reject(r, unknownCommandError(args, container))
	case info != nil && !info.CheckArity(args):
		s.reject(r, resp.AppendError(nil, "ERR wrong number of arguments for '"+info.Name+"' command"))
	case !s.authed && (info == nil || !info.Has(command.NoAuth)):
		s.reject(r, resp.AppendError(nil, "NOAUTH Authentication required."))
	case s.multi != nil && r.spec.multi != actsInMulti && info != nil && info.Has(command.NoMulti):
		s.reject(r, resp.AppendError(nil, "ERR Command not allowed inside a transaction"))
	case s.subscribed() && !s.resp3() && !r.spec.subscribed:
		s.reject(r, resp.AppendError(nil, "ERR Can't execute '"+displayOrRaw(info, args)+"': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"))
	case s.multi != nil && r.spec.multi != actsInMulti:
		s.queueInMulti(r)
	case r.spec.route == routeRefused || s.srv.denied(info):
		s.refuse(r)
	default:
		s.dispatchRoute(r)
	}
}

// dispatchRoute sends r the way its row in the table says.
func (s *session) dispatchRoute(r *request) {
	spec := r.spec
	r.route = spec.route
	switch spec.route {
	case routeLocal, routeFetched, routeTransaction:
		r.counters.Local()
		spec.handle(s, r)
	case routePubSub:
		s.routePubSub(r)
	case routeAdmin:
		s.sentData = true
		s.forwardAdmin(r)
	case routeExclusive:
		s.sentData = true
		if spec.handle != nil {
			spec.handle(s, r) // WATCH
		} else if isBlocking(spec, r.args) {
			s.forwardBlocking(r)
		} else {
			s.forwardShared(r) // XREAD without BLOCK
		}
	default:
		s.sentData = true
		s.forwardShared(r)
	}
}

// reject answers r with an error Redis would give before running it. Inside
// MULTI the transaction then aborts, as Redis's flagTransaction does; an
// EXEC rejected so ends the transaction at once with EXECABORT, as Redis's
// execCommandAbort does (it drops the error's "ERR " code, keeps others).
func (s *session) reject(r *request, reply []byte) {
	r.route = routeLocal
	if r.info != nil && r.info.Name == "exec" {
		// Redis words it so even outside MULTI.
		s.multi = nil
		msg := strings.TrimPrefix(resp.ErrorText(reply), "ERR ")
		s.endWatch(r, resp.AppendError(nil, "EXECABORT Transaction discarded because of: "+msg))
		return
	}
	if s.multi != nil {
		s.multi.failed = true
	}
	r.completeLocal(reply)
}

// refuse answers r with funnel's "not supported" error.
func (s *session) refuse(r *request) {
	s.srv.countError(errRefused)
	r.route = routeRefused
	r.completeLocal(resp.AppendError(nil, "ERR funnel: "+displayName(r.info.Name)+" is not supported through the proxy"))
}

// unknownCommandError is Redis's reply to a command it does not have
// (commandCheckExistence): the text quotes the name and the first
// arguments as C strings, cut at 128 bytes.
func unknownCommandError(args [][]byte, container *command.Info) []byte {
	if container != nil {
		return resp.AppendError(nil, "ERR unknown subcommand '"+cString(args[1], 128)+"'. Try "+strings.ToUpper(cString(args[0], 1<<20))+" HELP.")
	}
	var b strings.Builder
	for _, a := range args[1:] {
		if b.Len() >= 128 {
			break
		}
		b.WriteString("'" + cString(a, 128-b.Len()) + "' ")
	}
	return resp.AppendError(nil, "ERR unknown command '"+cString(args[0], 128)+"', with args beginning with: "+b.String())
}

// cString is b as C's "%.*s" prints it: up to its first NUL, at most max bytes.
func cString(b []byte, max int) string {
	for i, c := range b {
		if c == 0 {
			b = b[:i]
			break
		}
	}
	if len(b) > max {
		b = b[:max]
	}
	return string(b)
}

// displayName is a table name as Redis shows it in errors: "CLIENT KILL".
func displayName(name string) string {
	return strings.ToUpper(strings.ReplaceAll(name, "|", " "))
}

// displayOrRaw names a command for an error: the table's full name (as
// Redis's c->cmd->fullname), or what the client sent.
func displayOrRaw(info *command.Info, args [][]byte) string {
	if info != nil {
		return info.Name
	}
	return cString(args[0], 128)
}

// denied reports whether the operator refused the command with --deny.
func (srv *Server) denied(info *command.Info) bool {
	deny := srv.live().deny
	if info == nil || len(deny) == 0 {
		return false
	}
	base, _, _ := strings.Cut(info.Name, "|")
	return deny[info.Name] || deny[base]
}

// blocks reports whether a command blocks on the server with these
// arguments.
func blocks(spec *routeSpec, args [][]byte) bool {
	return spec.route == routeExclusive && spec.handle == nil && isBlocking(spec, args)
}

// isBlocking reports whether a command of a blocking row blocks with these
// arguments: XREAD and XREADGROUP block only with a BLOCK option.
func isBlocking(spec *routeSpec, args [][]byte) bool {
	if spec.timeout.kind != timeoutAfterBlock {
		return true
	}
	_, ok := blockIndex(args)
	return ok
}

// blockIndex finds the BLOCK option of XREAD or XREADGROUP before STREAMS,
// and returns the index of its value.
func blockIndex(args [][]byte) (int, bool) {
	for i := 1; i+1 < len(args); i++ {
		switch {
		case equalFold(args[i], "streams"):
			return 0, false
		case equalFold(args[i], "block"):
			return i + 1, true
		}
	}
	return 0, false
}

var errSessionClosed = errors.New("funnel: client connection closed")
