package proxy

import (
	"strings"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/tidwall/redcon"
)

// refused lists commands that cannot work through a multiplexer: they act on
// the upstream connection itself, or on the upstream server as a whole.
var refused = map[string]bool{
	"monitor": true, "sync": true, "psync": true, "replconf": true, "shutdown": true,
	"client|kill": true, "client|pause": true, "client|unpause": true, "client|reply": true,
	"client|tracking": true, "client|caching": true, "client|getredir": true,
	"client|trackinginfo": true, "client|unblock": true,
}

// pubsubCommands go to the hub, which shares one upstream subscriber
// connection among all subscribed clients.
var pubsubCommands = map[string]bool{
	"subscribe": true, "psubscribe": true, "ssubscribe": true,
	"unsubscribe": true, "punsubscribe": true, "sunsubscribe": true,
}

// multiControl lists the commands a client in MULTI sends that act at once
// rather than being queued, as in Redis.
var multiControl = map[string]bool{
	"exec": true, "discard": true, "multi": true, "watch": true, "quit": true, "reset": true,
}

// isBlocking reports whether a command may block on the server. XREAD and
// XREADGROUP block only with a BLOCK option; WAIT and WAITAOF always may.
func isBlocking(info *command.Info, args [][]byte) bool {
	if info == nil {
		return false
	}
	if info.Name == "wait" || info.Name == "waitaof" {
		return true
	}
	if !info.Has(command.Blocking) {
		return false
	}
	if info.Name == "xread" || info.Name == "xreadgroup" {
		for _, a := range args[1:] {
			if strings.EqualFold(string(a), "streams") {
				return false
			}
			if strings.EqualFold(string(a), "block") {
				return true
			}
		}
		return false
	}
	return true
}

// route decides how cmd is answered and returns the request for it, either
// complete (answered here) or on its way upstream; or nil when the request
// was queued already (pub/sub).
func (s *session) route(cmd resp.Command) *request {
	info := command.Lookup(cmd.Args)
	name := command.Name(info, cmd.Args)
	r := newRequest(s, cmd.Raw)
	r.name = name
	s.info.setLastCommand(info, name)
	s.srv.counters(name).client.Inc()
	s.srv.stats.clientCommands.Add(1)

	if !s.authed && (info == nil || !info.Has(command.NoAuth)) {
		return s.answer(r, "refused", redcon.AppendError(nil, "NOAUTH Authentication required."))
	}
	// RESP2 limits a subscribed client to a few commands; RESP3 does not,
	// since its messages are pushes, told apart from replies.
	if s.subscribed() && !s.resp3() && !subscribedAllowed[name] {
		return s.answer(r, "refused", notAllowedSubscribed(name))
	}
	if s.multi != nil && !multiControl[name] {
		s.queueInMulti(r, info, name, cmd.Args)
		return r
	}
	if refused[name] || s.srv.denied[name] || s.srv.denied[baseName(name)] {
		return s.refuse(r, name)
	}
	if name == "ping" && s.subscribed() && !s.resp3() {
		return s.answer(r, "local", subscribedPing(cmd.Args))
	}
	if pubsubCommands[name] {
		s.routePubSub(r, name, cmd.Args)
		return nil
	}
	if h := localHandlers[name]; h != nil {
		if !info.CheckArity(cmd.Args) {
			return s.answer(r, "local", arityError(name))
		}
		s.srv.counters(name).local.Inc()
		s.srv.stats.localReplies.Add(1)
		r.route = "local"
		h(s, r, cmd.Args)
		return r
	}
	if s.tryCache(r, info, cmd.Args) {
		return r
	}
	s.invalidate(info, cmd.Args)
	if isBlocking(info, cmd.Args) {
		r.route = "exclusive"
		s.forwardBlocking(r, info, cmd.Args)
		return r
	}
	s.forward(r)
	return r
}

// answer completes r with a reply funnel made.
func (s *session) answer(r *request, route string, reply []byte) *request {
	r.route = route
	r.Complete(reply, nil)
	return r
}

// refuse answers r with funnel's "not supported" error.
func (s *session) refuse(r *request, name string) *request {
	s.srv.metrics.Errors.WithLabelValues("refused").Inc()
	msg := "ERR funnel: " + strings.ToUpper(strings.ReplaceAll(name, "|", " ")) + " is not supported through the proxy"
	return s.answer(r, "refused", redcon.AppendError(nil, msg))
}

func baseName(name string) string {
	base, _, _ := strings.Cut(name, "|")
	return base
}

func arityError(name string) []byte {
	return redcon.AppendError(nil, "ERR wrong number of arguments for '"+name+"' command")
}
