package proxy

import (
	"strconv"
	"strings"

	"github.com/funnel-proxy/funnel/resp"
)

// The CLIENT subcommands that concern the client's own connection to
// funnel, answered by funnel. The others are refused (see routes.go).

func cmdClientSetName(s *session, r *request) {
	if !validClientName(r.args[2]) {
		r.completeLocal(resp.AppendError(nil, "ERR Client names cannot contain spaces, newlines or special characters."))
		return
	}
	s.info.setName(string(r.args[2]))
	r.completeLocal(resp.OK)
}

func cmdClientGetName(s *session, r *request) {
	if name := s.info.getName(); name == "" {
		r.completeLocal(s.nullReply())
	} else {
		r.completeLocal(resp.AppendBulkString(nil, name))
	}
}

func cmdClientID(s *session, r *request) { r.completeLocal(resp.AppendInt(nil, s.id)) }

func cmdClientInfo(s *session, r *request) { r.completeLocal(s.verbatim(s.info.line(nil, s.flags()))) }

func cmdClientOnOff(s *session, r *request) {
	if a := r.args[2]; equalFold(a, "on") || equalFold(a, "off") {
		r.completeLocal(resp.OK)
	} else {
		r.completeLocal(resp.AppendError(nil, "ERR syntax error"))
	}
}

func cmdClientHelp(s *session, r *request) {
	b := resp.AppendArray(nil, 1)
	b = resp.AppendStatus(b, "CLIENT SETNAME|GETNAME|ID|SETINFO|INFO|LIST|NO-EVICT|NO-TOUCH|REPLY|UNBLOCK are answered by funnel; KILL, PAUSE and TRACKING are not supported through the proxy.")
	r.completeLocal(b)
}

func cmdClientSetInfo(s *session, r *request) {
	attr := strings.ToLower(string(r.args[2]))
	if attr != "lib-name" && attr != "lib-ver" {
		r.completeLocal(resp.AppendError(nil, "ERR Unrecognized option '"+cString(r.args[2], 128)+"'"))
		return
	}
	if !validClientName(r.args[3]) {
		r.completeLocal(resp.AppendError(nil, "ERR "+attr+" cannot contain spaces, newlines or special characters."))
		return
	}
	s.info.mu.Lock()
	if attr == "lib-name" {
		s.info.libName = string(r.args[3])
	} else {
		s.info.libVer = string(r.args[3])
	}
	s.info.mu.Unlock()
	r.completeLocal(resp.OK)
}

// cmdClientList lists funnel's own clients: CLIENT LIST [TYPE type] [ID id ...].
func cmdClientList(s *session, r *request) {
	args := r.args
	var ids map[int64]bool
	kind := ""
	for j := 2; j < len(args); j++ {
		opt := strings.ToLower(string(args[j]))
		switch {
		case opt == "type" && j+1 < len(args):
			kind = strings.ToLower(string(args[j+1]))
			if kind != "normal" && kind != "master" && kind != "replica" && kind != "slave" && kind != "pubsub" {
				r.completeLocal(resp.AppendError(nil, "ERR Unknown client type '"+cString(args[j+1], 64)+"'"))
				return
			}
			j++
		case opt == "id" && j+1 < len(args):
			ids = map[int64]bool{}
			for j++; j < len(args); j++ {
				id, ok := resp.ParseInt(args[j])
				if !ok || id <= 0 {
					r.completeLocal(resp.AppendError(nil, "ERR Invalid client ID"))
					return
				}
				ids[id] = true
			}
		default:
			r.completeLocal(resp.AppendError(nil, "ERR syntax error"))
			return
		}
	}
	var out []byte
	if kind == "" || kind == "normal" {
		for _, other := range s.srv.sessionsSnapshot() {
			if ids == nil || ids[other.id] {
				out = other.info.line(out, other.flags())
			}
		}
	}
	r.completeLocal(s.verbatim(out))
}

// flags is the client's flags field in CLIENT LIST: b while blocked.
func (s *session) flags() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocking != nil {
		return "b"
	}
	return "N"
}

// replyMode is CLIENT REPLY's state: which replies funnel writes.
type replyMode uint8

const (
	replyOn   replyMode = iota
	replyOff            // no replies until CLIENT REPLY ON
	replySkip           // no reply to the command being routed, then on
)

// suppresses reports whether the reply of the command routed now is dropped.
func (m replyMode) suppresses() bool { return m != replyOn }

// next is the mode after the command routed now.
func (m replyMode) next() replyMode {
	if m == replySkip {
		return replyOn
	}
	return m
}

// cmdClientReply follows Redis's CLIENT REPLY ON|OFF|SKIP for the client's
// own replies: funnel drops them instead of writing them (the commands
// still run). OFF and SKIP have no reply of their own.
func cmdClientReply(s *session, r *request) {
	switch a := r.args[2]; {
	case equalFold(a, "on"):
		s.replyMode = replyOn
		r.suppress = false
		r.completeLocal(resp.OK)
	case equalFold(a, "off"):
		s.replyMode = replyOff
		r.suppress = true
		r.completeLocal(resp.OK)
	case equalFold(a, "skip"):
		if s.replyMode != replyOff {
			s.replyMode = replySkip
		}
		r.suppress = true
		r.completeLocal(resp.OK)
	default:
		r.completeLocal(resp.AppendError(nil, "ERR syntax error"))
	}
}

// cmdClientUnblock follows CLIENT UNBLOCK id [TIMEOUT|ERROR] for funnel's
// clients. A blocking command still waiting for a lane connection is ended
// by funnel: with ERROR it gets -UNBLOCKED, with TIMEOUT what Redis would
// answer now (run once in MULTI, see lastChance). One blocked upstream is
// unblocked there, on the exclusive connection's own upstream client id,
// so the real reply (the timeout's, or an element that came first) reaches
// the client.
func cmdClientUnblock(s *session, r *request) {
	args := r.args
	id, ok := resp.ParseInt(args[2])
	if !ok {
		r.completeLocal(resp.AppendError(nil, "ERR value is not an integer or out of range"))
		return
	}
	mode, word := unblockTimeout, "TIMEOUT"
	if len(args) == 4 {
		switch {
		case equalFold(args[3], "timeout"):
		case equalFold(args[3], "error"):
			mode, word = unblockError, "ERROR"
		default:
			r.completeLocal(resp.AppendError(nil, "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"))
			return
		}
	} else if len(args) > 4 {
		r.completeLocal(resp.AppendError(nil, "ERR syntax error"))
		return
	}
	target := s.srv.session(id)
	if target == nil {
		r.completeLocal(resp.ZeroReply)
		return
	}
	target.mu.Lock()
	bw := target.blocking
	var upstreamID int64
	if bw != nil && bw.lease != nil {
		upstreamID = bw.lease.conn.UpstreamID()
	}
	target.mu.Unlock()
	switch {
	case bw == nil:
		r.completeLocal(resp.ZeroReply)
	case bw.lease == nil:
		bw.cancel(errUnblocked{mode: mode})
		r.completeLocal(resp.OneReply)
	case upstreamID == 0:
		r.completeLocal(resp.ZeroReply) // the upstream would not tell the connection's id
	default:
		raw := resp.AppendCommand(nil, []byte("CLIENT"), []byte("UNBLOCK"), []byte(strconv.FormatInt(upstreamID, 10)), []byte(word))
		p := s.pool
		s.srv.fetchAsync(r, func() ([]byte, error) { return s.srv.fetch(p, "client|unblock", raw) })
	}
}
