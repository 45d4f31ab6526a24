package proxy

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"strconv"
	"strings"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/tidwall/redcon"
)

// localHandler answers a command inside funnel. It must complete r, now or
// later (INFO and COMMAND complete after a fetch).
type localHandler func(s *session, r *request, args [][]byte)

// localHandlers are the commands funnel answers itself: the handshake and
// connection-state commands every client sends, which would otherwise be
// billed on every new connection.
var localHandlers = map[string]localHandler{}

func init() {
	for name, h := range map[string]localHandler{
		"ping": cmdPing, "echo": cmdEcho, "quit": cmdQuit, "reset": cmdReset,
		"hello": cmdHello, "auth": cmdAuth, "select": cmdSelect, "info": cmdInfo,
		"client": cmdClient, "command": cmdCommand,
		"multi": cmdMulti, "exec": cmdExec, "discard": cmdDiscard, "watch": cmdWatch, "unwatch": cmdUnwatch,
	} {
		localHandlers[name] = h
	}
	// Every CLIENT subcommand lands in cmdClient, which answers or refuses it;
	// the refused ones never get here (see refused). COMMAND subcommands are
	// fetched once and kept, except GETKEYS, whose answer depends on its
	// arguments: it is forwarded.
	for _, sub := range []string{"setname", "getname", "id", "setinfo", "info", "list", "no-evict", "no-touch", "help"} {
		localHandlers["client|"+sub] = cmdClient
	}
	for _, sub := range []string{"count", "docs", "info", "list", "help"} {
		localHandlers["command|"+sub] = cmdCommand
	}
}

func errReply(msg string) []byte { return redcon.AppendError(nil, msg) }

var (
	replyOK   = []byte("+OK\r\n")
	replyPong = []byte("+PONG\r\n")
	replyNil  = []byte("$-1\r\n")
)

func cmdPing(s *session, r *request, args [][]byte) {
	switch len(args) {
	case 1:
		r.Complete(replyPong, nil)
	case 2:
		r.Complete(redcon.AppendBulk(nil, args[1]), nil)
	default:
		r.Complete(arityError("ping"), nil)
	}
}

func cmdEcho(s *session, r *request, args [][]byte) {
	r.Complete(redcon.AppendBulk(nil, args[1]), nil)
}

func cmdQuit(s *session, r *request, args [][]byte) {
	r.closeAfter, r.closeReason = true, "quit"
	r.Complete(replyOK, nil)
}

// cmdReset returns the connection to its first state, as Redis's RESET does:
// no transaction, nothing watched, no name, and logged out if funnel has a
// password.
func cmdReset(s *session, r *request, args [][]byte) {
	s.info.setName("")
	s.setAuthed(s.srv.opts.RequirePass == "")
	s.multi = nil
	s.leavePubSub()
	s.endWatch(r, []byte("+RESET\r\n"))
	// Back to the URL's db in RESP2, once the UNWATCH above (if any) and
	// everything before it are answered.
	if s.pool != s.srv.pool && s.waitIdle() {
		s.usePool(s.srv.pool, s.srv.pool.Upstream().DB, 2)
	}
}

func (s *session) setAuthed(ok bool) {
	s.authed = ok
	s.reader.SetLimits(s.limits())
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

var wrongPass = errReply("WRONGPASS invalid username-password pair or user is disabled.")

func cmdAuth(s *session, r *request, args [][]byte) {
	var user, pass []byte
	switch len(args) {
	case 2:
		if s.srv.opts.RequirePass == "" {
			r.Complete(errReply("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"), nil)
			return
		}
		user, pass = []byte("default"), args[1]
	case 3:
		user, pass = args[1], args[2]
	default:
		r.Complete(errReply("ERR syntax error"), nil)
		return
	}
	if !s.checkPassword(user, pass) {
		s.srv.metrics.Errors.WithLabelValues("auth_failed").Inc()
		r.Complete(wrongPass, nil)
		return
	}
	s.setAuthed(true)
	r.Complete(replyOK, nil)
}

// cmdHello follows Redis's HELLO: [protover [AUTH user pass] [SETNAME name]].
// HELLO 3 moves the client to pools whose upstream connections speak RESP3,
// so their replies still pass through unchanged; an upstream older than
// Redis 6 has no RESP3, and the client gets NOPROTO, as from that Redis.
func cmdHello(s *session, r *request, args [][]byte) {
	proto, next := s.info.proto(), 1
	if len(args) >= 2 {
		ver, err := strconv.ParseInt(string(args[1]), 10, 64)
		if err != nil {
			r.Complete(errReply("ERR Protocol version is not an integer or out of range"), nil)
			return
		}
		if ver != 2 && ver != 3 {
			r.Complete(errReply("NOPROTO unsupported protocol version"), nil)
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
			r.Complete(errReply("ERR Syntax error in HELLO option '"+string(args[j])+"'"), nil)
			return
		}
	}
	if user != nil && !s.checkPassword(user, pass) {
		s.srv.metrics.Errors.WithLabelValues("auth_failed").Inc()
		r.Complete(wrongPass, nil)
		return
	}
	if user == nil && !s.authed {
		r.Complete(errReply("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"), nil)
		return
	}
	if name != nil && !validClientName(name) {
		r.Complete(errReply("ERR Client names cannot contain spaces, newlines or special characters."), nil)
		return
	}
	version, refusal, err := s.helloVersion(proto)
	switch {
	case err != nil:
		r.Complete(nil, err)
		return
	case refusal != nil:
		r.Complete(refusal, nil)
		return
	case proto == 3 && !supportsRESP3(version):
		r.Complete(errReply("NOPROTO unsupported protocol version"), nil)
		return
	}
	if proto != s.info.proto() {
		p, refusal := s.poolToSwitch(s.db, proto, "HELLO "+strconv.Itoa(proto))
		if refusal != nil {
			r.Complete(refusal, nil)
			return
		}
		s.usePool(p, s.db, proto)
	}
	if user != nil {
		s.setAuthed(true)
	}
	if name != nil {
		s.info.setName(string(name))
	}
	r.Complete(helloReply(proto, version, s.id), nil)
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
		return "", errReply("NOPROTO unsupported protocol version"), nil
	}
	if v, r, err2 := s.srv.upstreamVersion(s.pool); err2 == nil && r == nil && !supportsRESP3(v) {
		return v, nil, nil
	}
	return version, refusal, err
}

// poolToSwitch returns the pool for db in RESP version proto, once nothing
// of the client is in flight, so no command overtakes the switch; or an
// error reply. what names the command asking, for that reply.
func (s *session) poolToSwitch(db, proto int, what string) (*pool.Pool, []byte) {
	if s.lease != nil {
		// Redis allows SELECT and HELLO inside a WATCH span; funnel would
		// need the watching connection in both dbs or protocols.
		return nil, errReply("ERR funnel: " + what + " inside a WATCH span is not supported through the proxy")
	}
	p := s.srv.poolFor(db, proto)
	if p == nil {
		return nil, errReply("ERR funnel: too many dbs in use (at most " + strconv.Itoa(maxDBPools) + " pools of dbs and protocols)")
	}
	if !s.waitIdle() {
		return nil, errReply("ERR " + errSessionClosed.Error())
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
// upstream once, so an index out of range gets Redis's own answer.
func cmdSelect(s *session, r *request, args [][]byte) {
	db, err := strconv.Atoi(string(args[1]))
	switch {
	case err != nil:
		r.Complete(errReply("ERR value is not an integer or out of range"), nil)
		return
	case db < 0:
		r.Complete(errReply("ERR DB index is out of range"), nil)
		return
	case db == s.db:
		r.Complete(replyOK, nil)
		return
	}
	p, refusal := s.poolToSwitch(db, s.info.proto(), "SELECT")
	if refusal != nil {
		r.Complete(refusal, nil)
		return
	}
	reply, err := s.srv.fetch(p, "select", r.Raw)
	switch {
	case err != nil && strings.Contains(err.Error(), "DB index is out of range"):
		r.Complete(errReply("ERR DB index is out of range"), nil)
	case err != nil:
		r.Complete(nil, err)
	case string(reply) != "+OK\r\n":
		r.Complete(reply, nil)
	default:
		s.usePool(p, db, s.info.proto())
		r.Complete(replyOK, nil)
	}
}

// cmdClient answers the CLIENT subcommands that concern the client's own
// connection to funnel.
func cmdClient(s *session, r *request, args [][]byte) {
	sub := strings.ToLower(string(args[1]))
	switch sub {
	case "setname":
		if len(args) != 3 {
			r.Complete(arityError("client|setname"), nil)
		} else if !validClientName(args[2]) {
			r.Complete(errReply("ERR Client names cannot contain spaces, newlines or special characters."), nil)
		} else {
			s.info.setName(string(args[2]))
			r.Complete(replyOK, nil)
		}
	case "getname":
		if name := s.info.getName(); name == "" {
			r.Complete(s.nullReply(), nil)
		} else {
			r.Complete(redcon.AppendBulkString(nil, name), nil)
		}
	case "id":
		r.Complete(redcon.AppendInt(nil, s.id), nil)
	case "setinfo":
		clientSetInfo(s, r, args)
	case "info":
		r.Complete(s.verbatim(s.info.line(nil, "N")), nil)
	case "list":
		clientList(s, r, args)
	case "no-evict", "no-touch":
		if len(args) == 3 && (bytes.EqualFold(args[2], []byte("on")) || bytes.EqualFold(args[2], []byte("off"))) {
			r.Complete(replyOK, nil)
		} else {
			r.Complete(errReply("ERR syntax error"), nil)
		}
	case "help":
		b := redcon.AppendArray(nil, 1)
		b = redcon.AppendString(b, "CLIENT SETNAME|GETNAME|ID|SETINFO|INFO|LIST|NO-EVICT|NO-TOUCH are answered by funnel; KILL, PAUSE, REPLY and TRACKING are not supported through the proxy.")
		r.Complete(b, nil)
	default:
		r.Complete(errReply("ERR unknown subcommand '"+resp.Quote(args[1], 128)+"'. Try CLIENT HELP."), nil)
	}
}

func clientSetInfo(s *session, r *request, args [][]byte) {
	if len(args) != 4 {
		r.Complete(arityError("client|setinfo"), nil)
		return
	}
	attr := strings.ToLower(string(args[2]))
	if attr != "lib-name" && attr != "lib-ver" {
		r.Complete(errReply("ERR Unrecognized option '"+resp.Quote(args[2], 128)+"'"), nil)
		return
	}
	if !validClientName(args[3]) {
		r.Complete(errReply("ERR "+attr+" cannot contain spaces, newlines or special characters."), nil)
		return
	}
	s.info.mu.Lock()
	if attr == "lib-name" {
		s.info.libName = string(args[3])
	} else {
		s.info.libVer = string(args[3])
	}
	s.info.mu.Unlock()
	r.Complete(replyOK, nil)
}

// clientList lists funnel's own clients: CLIENT LIST [TYPE type] [ID id ...].
func clientList(s *session, r *request, args [][]byte) {
	var ids map[int64]bool
	kind := ""
	for j := 2; j < len(args); j++ {
		opt := strings.ToLower(string(args[j]))
		switch {
		case opt == "type" && j+1 < len(args):
			kind = strings.ToLower(string(args[j+1]))
			if kind != "normal" && kind != "master" && kind != "replica" && kind != "slave" && kind != "pubsub" {
				r.Complete(errReply("ERR Unknown client type '"+resp.Quote(args[j+1], 64)+"'"), nil)
				return
			}
			j++
		case opt == "id" && j+1 < len(args):
			ids = map[int64]bool{}
			for j++; j < len(args); j++ {
				id, err := strconv.ParseInt(string(args[j]), 10, 64)
				if err != nil || id <= 0 {
					r.Complete(errReply("ERR Invalid client ID"), nil)
					return
				}
				ids[id] = true
			}
		default:
			r.Complete(errReply("ERR syntax error"), nil)
			return
		}
	}
	var out []byte
	if kind == "" || kind == "normal" {
		for _, other := range s.srv.sessionsSnapshot() {
			if ids == nil || ids[other.id] {
				out = other.info.line(out, "N")
			}
		}
	}
	r.Complete(s.verbatim(out), nil)
}

// cmdCommand answers COMMAND and its subcommands from a copy fetched from the
// upstream once: the table does not change while the upstream runs.
func cmdCommand(s *session, r *request, args [][]byte) {
	key := cacheKey(args) // args do not outlive this call
	p, proto := s.pool, s.info.proto()
	s.srv.fetchAsync(r, func() ([]byte, error) {
		// COMMAND's replies differ by protocol (sets and maps in RESP3), not
		// by db: ask the client's pool, keep one copy per protocol.
		return s.srv.commandCache.get(s.srv, p, strconv.Itoa(proto)+key, r.name, r.Raw, 0)
	})
}

// cacheKey is args in lower case, joined.
func cacheKey(args [][]byte) string {
	return strings.ToLower(string(bytes.Join(args, []byte{0})))
}
