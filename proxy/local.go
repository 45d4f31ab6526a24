package proxy

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"strconv"
	"strings"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// The handshake and connection-state commands every client sends, answered
// by funnel so that they cost nothing upstream. Each handler's arguments
// have passed the command table's arity check.

func cmdPing(s *session, r *request) {
	args := r.args
	switch {
	case s.subscribed() && !s.resp3():
		b := resp.AppendArray(nil, 2)
		b = resp.AppendBulkString(b, "pong")
		if len(args) > 1 {
			b = resp.AppendBulk(b, args[1])
		} else {
			b = resp.AppendBulkString(b, "")
		}
		r.completeLocal(b)
	case len(args) == 1:
		r.completeLocal(resp.Pong)
	case len(args) == 2:
		r.completeLocal(resp.AppendBulk(nil, args[1]))
	default:
		r.completeLocal(arityError("ping"))
	}
}

func cmdEcho(s *session, r *request) { r.completeLocal(resp.AppendBulk(nil, r.args[1])) }

func cmdQuit(s *session, r *request) {
	r.closeAfter = closedQuit
	r.completeLocal(resp.OK)
}

func arityError(name string) []byte {
	return resp.AppendError(nil, "ERR wrong number of arguments for '"+name+"' command")
}

// cmdReset returns the connection to its first state, as Redis's RESET does:
// no transaction, nothing watched or subscribed, no name, replies on, RESP2
// in the URL's db, and logged out if funnel has a password.
func cmdReset(s *session, r *request) {
	s.info.setName("")
	s.setAuthed(s.srv.opts.RequirePass == "")
	s.multi = nil
	s.replyMode = replyOn
	r.suppress = false
	s.leavePubSub()
	s.endWatch(r, resp.AppendStatus(nil, "RESET"))
	if s.pool == s.srv.pool {
		return
	}
	// Back to the URL's db in RESP2, once the UNWATCH above (if any) and
	// everything before it are answered.
	s.afterIdle(func() { s.usePool(s.srv.pool, s.srv.pool.Upstream().DB, 2) })
}

// afterIdle runs fn once nothing of the client is in flight: at once if so
// already, else on the resumer. fn must not be followed by anything else.
func (s *session) afterIdle(fn func()) {
	if s.upInFlight.Load() == 0 {
		fn()
		return
	}
	s.offload(func() {
		if s.waitIdle() {
			fn()
		}
	})
}

// checkPassword reports whether user and password are the client password
// funnel was given, comparing in constant time. With no password set, the
// default user accepts anything, as Redis's does.
func (s *session) checkPassword(user, password []byte) bool {
	if string(user) != "default" {
		return false
	}
	want := s.srv.opts.RequirePass
	if want == "" {
		return true
	}
	return subtle.ConstantTimeCompare(password, []byte(want)) == 1
}

var wrongPass = resp.AppendError(nil, "WRONGPASS invalid username-password pair or user is disabled.")

func cmdAuth(s *session, r *request) {
	args := r.args
	var user, pass []byte
	switch len(args) {
	case 2:
		if s.srv.opts.RequirePass == "" {
			r.completeLocal(resp.AppendError(nil, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"))
			return
		}
		user, pass = []byte("default"), args[1]
	case 3:
		user, pass = args[1], args[2]
	default:
		r.completeLocal(resp.AppendError(nil, "ERR syntax error"))
		return
	}
	if !s.checkPassword(user, pass) {
		s.srv.countError(errAuthFailed)
		r.completeLocal(wrongPass)
		return
	}
	s.setAuthed(true)
	r.completeLocal(resp.OK)
}

// cmdHello follows Redis's HELLO: [protover [AUTH user pass] [SETNAME name]].
// HELLO 3 moves the client to pools whose upstream connections speak RESP3,
// so their replies still pass through unchanged; an upstream older than
// Redis 6 has no RESP3, and the client gets NOPROTO, as from that Redis.
// Authentication and the name take effect at once, as in Redis, before the
// next command is read; only learning the upstream's version (once) and
// moving pools may wait, on the resumer.
func cmdHello(s *session, r *request) {
	args := r.args
	proto, next := s.info.proto(), 1
	if len(args) >= 2 {
		ver, ok := resp.ParseInt(args[1])
		if !ok {
			r.completeLocal(resp.AppendError(nil, "ERR Protocol version is not an integer or out of range"))
			return
		}
		if ver != 2 && ver != 3 {
			r.completeLocal(resp.AppendError(nil, "NOPROTO unsupported protocol version"))
			return
		}
		proto, next = int(ver), 2
	}
	var user, pass, name []byte
	for j := next; j < len(args); j++ {
		more := len(args) - 1 - j
		switch opt := strings.ToLower(string(args[j])); {
		case opt == "auth" && more >= 2:
			user, pass = args[j+1], args[j+2]
			j += 2
		case opt == "setname" && more >= 1:
			name = args[j+1]
			j++
		default:
			r.completeLocal(resp.AppendError(nil, "ERR Syntax error in HELLO option '"+cString(args[j], 128)+"'"))
			return
		}
	}
	if user != nil && !s.checkPassword(user, pass) {
		s.srv.countError(errAuthFailed)
		r.completeLocal(wrongPass)
		return
	}
	if user != nil {
		s.setAuthed(true)
	}
	if !s.authed {
		r.completeLocal(resp.AppendError(nil, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"))
		return
	}
	if name != nil && !validClientName(name) {
		r.completeLocal(resp.AppendError(nil, "ERR Client names cannot contain spaces, newlines or special characters."))
		return
	}
	if name != nil {
		s.info.setName(string(name))
	}
	finish := func() {
		version, refusal, err := s.helloVersion(proto)
		switch {
		case err != nil:
			r.Complete(nil, err)
			return
		case refusal != nil:
			r.completeLocal(refusal)
			return
		case proto == 3 && !supportsRESP3(version):
			r.completeLocal(resp.AppendError(nil, "NOPROTO unsupported protocol version"))
			return
		}
		if proto != s.info.proto() {
			p, refusal := s.poolToSwitch(s.db, proto, "HELLO "+strconv.Itoa(proto))
			if refusal != nil {
				r.completeLocal(refusal)
				return
			}
			s.usePool(p, s.db, proto)
		}
		r.completeLocal(helloReply(proto, version, s.id))
	}
	if s.srv.version.Load() != nil && (proto == s.info.proto() || s.upInFlight.Load() == 0) && !s.resuming {
		finish() // nothing to wait for
		return
	}
	s.offload(finish)
}

// helloVersion returns the upstream's version for HELLO. It asks the pool
// the client is about to use, so a funnel whose clients all speak RESP3
// opens no RESP2 connection. If a RESP3 connection cannot log in because
// the upstream refuses HELLO 3, the client gets NOPROTO as from that
// upstream; if it fails otherwise, RESP2 tells whether the upstream is too
// old for RESP3.
func (s *session) helloVersion(proto int) (version string, refusal []byte, err error) {
	p := s.pool
	if proto == 3 {
		if p3 := s.srv.poolFor(s.db, 3); p3 != nil {
			p = p3
		}
	}
	version, refusal, err = s.srv.upstreamVersion(p)
	if err == nil || p == s.pool {
		return version, refusal, err
	}
	if le := (*pool.LoginError)(nil); errors.As(err, &le) && le.RefusesRESP3() {
		// The upstream turned down HELLO 3 itself (RESP3 switched off, or
		// no HELLO at all): the client gets its answer.
		return "", resp.AppendError(nil, "NOPROTO unsupported protocol version"), nil
	}
	if v, r, err2 := s.srv.upstreamVersion(s.pool); err2 == nil && r == nil && !supportsRESP3(v) {
		return v, nil, nil
	}
	return version, refusal, err
}

// poolToSwitch returns the pool for db in RESP version proto, once nothing
// of the client is in flight, so no command overtakes the switch; or an
// error reply. what names the command asking, for that reply. It may wait:
// only the resumer, or a client with nothing in flight, may call it.
func (s *session) poolToSwitch(db, proto int, what string) (*pool.Pool, []byte) {
	if s.lease != nil {
		// Redis allows SELECT and HELLO inside a WATCH span; funnel would
		// need the watching connection in both dbs or protocols.
		return nil, resp.AppendError(nil, "ERR funnel: "+what+" inside a WATCH span is not supported through the proxy")
	}
	p := s.srv.poolFor(db, proto)
	if p == nil {
		return nil, resp.AppendError(nil, "ERR funnel: too many dbs in use (at most "+strconv.Itoa(maxDBPools)+" pools of dbs and protocols)")
	}
	if !s.waitIdle() {
		return nil, resp.AppendError(nil, "ERR "+errSessionClosed.Error())
	}
	return p, nil
}

// usePool makes p, which serves db in RESP version proto, the client's pool.
// The client must have nothing in flight.
func (s *session) usePool(p *pool.Pool, db, proto int) {
	s.db, s.pool, s.sticky, s.stickyLease = db, p, nil, nil
	s.info.resp3.Store(proto == 3)
	s.info.mu.Lock()
	s.info.db = db
	s.info.mu.Unlock()
}

// cmdSelect switches the client to another db. Commands in the URL's db go
// through the main pool; another db gets a pool of its own, made on first
// use and dialed lazily like the main one (so a db used by one client at a
// time costs one upstream connection). Funnel waits until the client has
// nothing in flight, so no command overtakes the switch, and asks the
// upstream once per db, so an index out of range gets Redis's own answer.
func cmdSelect(s *session, r *request) {
	n, ok := resp.ParseInt(r.args[1])
	db := int(n)
	switch {
	case !ok || n != int64(int32(n)):
		r.completeLocal(resp.AppendError(nil, "ERR value is not an integer or out of range"))
		return
	case db < 0:
		r.completeLocal(resp.AppendError(nil, "ERR DB index is out of range"))
		return
	case db == s.db:
		r.completeLocal(resp.OK)
		return
	}
	switchTo := func() {
		p, refusal := s.poolToSwitch(db, s.info.proto(), "SELECT")
		if refusal != nil {
			r.completeLocal(refusal)
			return
		}
		if _, ok := s.srv.validDBs.Load(db); !ok {
			reply, err := s.srv.fetch(p, "select", r.Raw)
			switch {
			case err != nil && strings.Contains(err.Error(), "DB index is out of range"):
				// A pool for a db that does not exist would only take a
				// place among the few a funnel makes.
				s.srv.dropPool(db, s.info.proto(), p)
				r.completeLocal(resp.AppendError(nil, "ERR DB index is out of range"))
				return
			case err != nil:
				r.Complete(nil, err)
				return
			case !bytes.Equal(reply, resp.OK):
				r.Complete(reply, nil)
				return
			}
			s.srv.validDBs.Store(db, true)
		}
		s.usePool(p, db, s.info.proto())
		r.completeLocal(resp.OK)
	}
	if _, ok := s.srv.validDBs.Load(db); ok && s.upInFlight.Load() == 0 && s.lease == nil {
		switchTo() // nothing to wait for
		return
	}
	s.offload(switchTo)
}

// cmdCommand answers COMMAND and its subcommands from a copy fetched from the
// upstream once: the table does not change while the upstream runs.
func cmdCommand(s *session, r *request) {
	key := strconv.Itoa(s.info.proto()) + cacheKey(r.args) // args do not outlive this call
	name := "command"
	if r.info != nil {
		name = r.info.Name
	}
	p, raw := s.pool, r.Raw
	s.srv.fetchAsync(r, func() ([]byte, error) {
		// COMMAND's replies differ by protocol (sets and maps in RESP3), not
		// by db: ask the client's pool, keep one copy per protocol.
		return s.srv.commandCache.get(s.srv, p, key, name, raw, 0, r.start)
	})
}
