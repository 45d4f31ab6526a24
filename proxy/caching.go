package proxy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/glob"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// CacheRule caches reads of keys matching Pattern (a Redis glob) for TTL.
type CacheRule struct {
	Pattern string
	TTL     time.Duration
}

// String is the rule as ParseCacheRule reads it: "bull:*=2s".
func (r CacheRule) String() string { return r.Pattern + "=" + r.TTL.String() }

// ParseCacheRule reads "PATTERN=TTL", for example "bull:*=2s".
func ParseCacheRule(s string) (CacheRule, error) {
	i := strings.LastIndexByte(s, '=')
	if i <= 0 {
		return CacheRule{}, fmt.Errorf("cache rule %q: want PATTERN=TTL, e.g. 'bull:*=2s'", s)
	}
	ttl, err := time.ParseDuration(s[i+1:])
	if err != nil || ttl <= 0 {
		return CacheRule{}, fmt.Errorf("cache rule %q: TTL must be a positive duration like 2s", s)
	}
	return CacheRule{Pattern: s[:i], TTL: ttl}, nil
}

// ruleTTL returns the TTL for a read of keys: the shortest TTL among st's
// rules matched, if every key matches one; else 0 (not cached). It also
// returns the rule that gave that TTL, whose counters the read goes to.
func (st *settings) ruleTTL(keys [][]byte) (time.Duration, *CacheRule) {
	var ttl time.Duration
	var rule *CacheRule
	rules := st.cacheRules
	for _, k := range keys {
		best := -1
		for i := range rules {
			if glob.Match(rules[i].Pattern, string(k)) && (best < 0 || rules[i].TTL < rules[best].TTL) {
				best = i
			}
		}
		if best < 0 {
			return 0, nil
		}
		if ttl == 0 || rules[best].TTL < ttl {
			ttl, rule = rules[best].TTL, &rules[best]
		}
	}
	return ttl, rule
}

// isScript reports whether a command runs Lua or a function.
func isScript(name string) bool {
	switch name {
	case "eval", "evalsha", "fcall", "eval_ro", "evalsha_ro", "fcall_ro":
		return true
	}
	return false
}

// scriptSHA returns the script a call runs: EVAL's body hashed (and
// judged, see scriptBook), so EVAL and EVALSHA of one script share cache
// entries. FCALL names a function rather than a script.
func (srv *Server) scriptSHA(name string, args [][]byte) string {
	if name == "eval" || name == "eval_ro" {
		return srv.scripts.learn(args[1])
	}
	return strings.ToLower(string(args[1]))
}

// readOnlyCall reports whether a command only reads, so that it may be
// coalesced or cached, and it is deterministic with known keys. st names
// the scripts the operator marked read-only.
func (srv *Server) readOnlyCall(st *settings, info *command.Info, args [][]byte) bool {
	if isScript(info.Name) {
		if info.Has(command.ReadOnly) {
			return true
		}
		sha := srv.scriptSHA(info.Name, args)
		return st.scripts[sha] || srv.scripts.readOnly(sha)
	}
	return info.Has(command.ReadOnly) && !info.Has(command.Nondeterministic) && !blocks(routeOf(info), args)
}

// readKeys returns the keys args name, as views into args in the
// session's scratch, and whether the table could find every one of them.
func (s *session) readKeys(info *command.Info, args [][]byte) ([][]byte, bool) {
	pos, complete := info.KeyPositions(s.keyPos[:0], args)
	s.keyPos = pos
	keys := s.keyArgs[:0]
	for _, p := range pos {
		keys = append(keys, args[p])
	}
	s.keyArgs = keys
	return keys, complete
}

// appendReadKey appends to dst the name of a read for the cache: the
// command and its arguments, with a script's body replaced by its SHA1. A
// RESP3 client's reads are kept apart (their replies have other types),
// under a name that starts with "3". Two reads share a name only if their
// parsed commands are identical.
func (srv *Server) appendReadKey(dst []byte, info *command.Info, args [][]byte, resp3 bool) []byte {
	if resp3 {
		dst = append(dst, '3')
	}
	if isScript(info.Name) {
		name := strings.TrimSuffix(strings.TrimSuffix(info.Name, "_ro"), "sha")
		norm := append([][]byte{[]byte(name), []byte(srv.scriptSHA(info.Name, args))}, args[2:]...)
		return resp.AppendCommand(dst, norm...)
	}
	dst = append(dst, info.Name...)
	dst = append(dst, 0)
	for _, a := range args[1:] {
		dst = strconv.AppendInt(dst, int64(len(a)), 10)
		dst = append(dst, ':')
		dst = append(dst, a...)
	}
	return dst
}

// tryCache answers a read from the cache, or joins an identical read in
// flight, or leads a new one. It reports false when the read is not one
// the cache handles; the caller then forwards it as usual.
func (s *session) tryCache(r *request) bool {
	c := s.srv.cache
	info, args := r.info, r.args
	if c == nil || info == nil || s.lease != nil || s.stickyLease != nil {
		return false
	}
	st := s.srv.live()
	if !s.srv.readOnlyCall(st, info, args) {
		return false
	}
	keys, complete := s.readKeys(info, args)
	defer clear(s.keyArgs) // they point into the request, which may be huge
	if !complete || len(keys) == 0 {
		return false
	}
	ttl, rule := st.ruleTTL(keys)
	if ttl == 0 && s.srv.opts.DisableCoalesce {
		return false
	}
	var counters *metrics.RuleCounters
	if rule != nil {
		counters = s.srv.metrics.CacheRule(rule.Pattern) // a label from the configuration
	}
	s.readKeyBuf = s.srv.appendReadKey(s.readKeyBuf[:0], info, args, s.resp3())
	if cap(s.readKeyBuf) > maxKeptBuf {
		defer func() { s.readKeyBuf = nil }()
	}
	hit, joined, lead := c.Lookup(s.db, s.readKeyBuf, keys, ttl, time.Now(), (*cacheReader)(r))
	if lead != nil && ttl > 0 && s.srv.live().cacheGen != st.cacheGen {
		// A reload changed the rules between the TTL and the lookup, and
		// its Reset may have come before this flight: reset again, so the
		// flight, led under the old TTL, fills nothing (see Server.Reload).
		c.Reset()
	}
	switch {
	case hit != nil:
		if counters != nil {
			counters.Hit()
		}
		r.route = routeCacheHit
		r.completeLocal(hit)
	case joined:
		// r completes with the leader's reply.
		if counters != nil {
			counters.Joined()
		}
	default:
		if counters != nil {
			counters.Miss()
		}
		r.flight = lead
		r.cancellable = false // others may join it
		s.submit(s.sticky, r)
	}
	return true
}

// cacheReader is a request as the cache's Reader.
type cacheReader request

// MayHit lets a stored reply answer a client only when it has nothing in
// flight. A reply answered now while earlier commands of the client still
// run upstream would come before them in time though after them in order:
// after GET k (in flight, it will read the write that comes next), a hit
// for the second GET k would read from before that write.
func (cr *cacheReader) MayHit() bool { return (*request)(cr).s.upInFlight.Load() == 0 }

// flightOwner is where a flight's read went: its connection, and how many
// requests had been queued there before it.
type flightOwner struct {
	conn *pool.Conn
	seq  uint64
}

// CanJoin lets a client join a read in flight only where the read runs
// after everything the client sent before: any flight when the client has
// nothing in flight (the cache's own check, that no write to the keys
// began since the flight's read was sent, makes its reply current), else
// only a flight queued on the connection the client's commands are on,
// after the last of them. So a pipelined GET k; GET k never gets, for the
// second, a reply read before the first. Joining counts the request as the
// client's in flight there, like one of its own; that is set up here,
// under the cache's lock, before the leader can complete it.
func (cr *cacheReader) CanJoin(owner any) bool {
	r := (*request)(cr)
	s := r.s
	o, _ := owner.(*flightOwner)
	if o == nil || o.conn == nil || s.upInFlight.Load() > 0 && (o.conn != s.sticky || o.conn != s.lastConn || o.seq < s.lastSeq) {
		return false
	}
	r.route, r.upstream = routeJoined, true
	if s.upInFlight.Add(1) == 1 {
		s.sticky, s.stickyLease = o.conn, nil
		s.lastConn, s.lastSeq = o.conn, o.seq
	} else {
		s.lastSeq = max(s.lastSeq, o.seq)
	}
	return true
}

// Lead counts the request as going upstream and picks its connection.
func (cr *cacheReader) Lead() any {
	r := (*request)(cr)
	c := r.s.nextConn(r)
	r.s.countUpstream(r, 1)
	// The owner lives in the leader, which outlives the flight's place in
	// the cache (Finish comes first): no allocation.
	r.owner = flightOwner{conn: c, seq: c.Enqueued()}
	return &r.owner
}

// beginWrite tells the cache about a command that may write, before it is
// sent: its keys, or its whole db when the keys are unknown, stay pending
// until its reply is in (see request.finish), with the expiry the command
// gives them.
func (s *session) beginWrite(r *request, info *command.Info, args [][]byte) {
	c := s.srv.cache
	if c == nil {
		return
	}
	if info == nil {
		r.writes = append(r.writes, c.BeginWriteDB(s.db)) // an unknown command may write anything
		return
	}
	// A script's SHA1 is worked out once here (EVAL hashes its body): it
	// says whether the script only reads, and which keys it writes.
	sha := ""
	switch {
	case isScript(info.Name):
		if info.Has(command.ReadOnly) {
			return
		}
		if info.Name != "fcall" {
			sha = s.srv.scriptSHA(info.Name, args)
			if s.srv.live().scripts[sha] || s.srv.scripts.readOnly(sha) {
				return
			}
		}
	case !info.Has(command.Write) && !info.Has(command.MayReplicate):
		return
	}
	switch {
	case info.Name == "flushall" || info.Name == "swapdb" || info.Name == "move" || info.Name == "copy" && hasOption(args, "db"):
		// These reach into other dbs.
		r.writes = append(r.writes, c.BeginWriteDB(-1))
		return
	}
	if r.absorb != nil {
		// An HSET funnel may learn from (see tryAbsorb): identical ones in
		// flight together may all teach it.
		r.addWrite(c.BeginHashSet(s.db, args[1], args[2:], r.stripeStorage()))
		return
	}
	pos, complete := info.KeyPositions(s.keyPos[:0], args)
	s.keyPos = pos
	if !complete || (len(pos) == 0 && !isScript(info.Name)) {
		r.writes = append(r.writes, c.BeginWriteDB(s.db))
		return
	}
	expiring := 0
	// The keys the write may change go in keyArgs, those it may give an
	// expiry first (keyArgs[:expiring]). A script's keys it only reads are
	// left out, and it may give an expiry only to the keys that reach a
	// command other than a read or commandKeepsTTL's (see scriptBook).
	written := func(i int) bool { return sha == "" || s.srv.scripts.mayWrite(sha, i+1) }
	keyExpires := sha == "" && !keepsTTLOf(info)
	mayExpire := func(i int) bool {
		if sha == "" {
			return keyExpires
		}
		return s.srv.scripts.mayExpire(sha, i+1)
	}
	s.keyArgs = s.keyArgs[:0]
	for _, expiry := range [2]bool{true, false} {
		for i, p := range pos {
			if written(i) && mayExpire(i) == expiry {
				s.keyArgs = append(s.keyArgs, args[p])
			}
		}
		if expiry {
			expiring = len(s.keyArgs)
		}
	}
	if len(s.keyArgs) == 0 && len(pos) > 0 {
		return
	}
	// The read's time, not now: Redis runs the write later, so the
	// expiry worked out is never later than the real one.
	expires := writeExpiry(info.Name, args, r.start)
	if (info.Name == "rename" || info.Name == "renamenx" || info.Name == "copy") && len(args) > 1 {
		expires = c.KnownExpiry(s.db, args[1]) // the destination takes the source's expiry
	}
	if expiring > 0 {
		r.addWrite(c.BeginWrite(s.db, s.keyArgs[:expiring], expires, r.stripeStorage()))
	}
	if expiring < len(s.keyArgs) || len(s.keyArgs) == 0 {
		r.addWrite(c.BeginWriteKeepingTTL(s.db, s.keyArgs[expiring:], r.stripeStorage()))
	}
	clear(s.keyArgs) // they point into the request, which may be huge
}

// stripeStorage is r's own storage for its first cache write's stripes, so
// that a write allocates nothing; a later write gets none (it must not
// share the first one's).
func (r *request) stripeStorage() []uint32 {
	if len(r.writes) == 0 {
		return r.stripes
	}
	return nil
}

// addWrite records a cache write r began.
func (r *request) addWrite(w cache.Write) {
	if len(r.writes) == 0 {
		r.stripes = w.Stripes()
	}
	r.writes = append(r.writes, w)
}

// writeExpiry returns the soonest expiry a write gives its keys, or the
// zero time: SET's EX, PX, EXAT and PXAT, SETEX, PSETEX, GETEX, the EXPIRE
// family, and RESTORE's TTL. A relative expiry counts from now, before the
// command is sent, so it is never later than the one Redis sets. Absolute
// times are the upstream's clock, taken to agree with funnel's.
func writeExpiry(name string, args [][]byte, now time.Time) time.Time {
	num := func(i int) (int64, bool) {
		if i >= len(args) {
			return 0, false
		}
		return resp.ParseInt(args[i])
	}
	rel := func(n int64, unit time.Duration) time.Time { return now.Add(time.Duration(n) * unit) }
	option := func(from int) time.Time {
		for i := from; i+1 < len(args); i++ {
			n, ok := num(i + 1)
			if !ok {
				continue
			}
			switch strings.ToLower(string(args[i])) {
			case "ex":
				return rel(n, time.Second)
			case "px":
				return rel(n, time.Millisecond)
			case "exat":
				return time.Unix(n, 0)
			case "pxat":
				return time.UnixMilli(n)
			}
		}
		return time.Time{}
	}
	n, ok := num(2)
	switch name {
	case "set":
		return option(3)
	case "getex":
		return option(2)
	case "setex", "expire":
		if ok {
			return rel(n, time.Second)
		}
	case "psetex", "pexpire":
		if ok {
			return rel(n, time.Millisecond)
		}
	case "expireat":
		if ok {
			return time.Unix(n, 0)
		}
	case "pexpireat":
		if ok {
			return time.UnixMilli(n)
		}
	case "restore":
		if ok && n > 0 {
			if hasOption(args[min(4, len(args)):], "absttl") {
				return time.UnixMilli(n)
			}
			return rel(n, time.Millisecond)
		}
	}
	return time.Time{}
}

// hasOption reports whether args has the option word, in any case.
func hasOption(args [][]byte, word string) bool {
	for _, a := range args {
		if equalFold(a, word) {
			return true
		}
	}
	return false
}

// cacheInfo renders the cache counters for INFO's Funnel section.
func (srv *Server) cacheInfo(b []byte) []byte {
	if srv.cache == nil {
		return b
	}
	st := srv.cache.Stats()
	for _, kv := range []struct {
		k string
		v int64
	}{
		{"cache_hits", st.Hits}, {"cache_misses", st.Misses}, {"cache_joined_flights", st.Joins},
		{"cache_dropped_fills", st.DroppedFills}, {"cache_evictions", st.Evictions},
		{"cache_bytes", st.Bytes}, {"cache_entries", st.Entries},
	} {
		b = append(b, "funnel_"+kv.k+":"...)
		b = strconv.AppendInt(b, kv.v, 10)
		b = append(b, "\r\n"...)
	}
	return b
}

var _ cache.Reader = (*cacheReader)(nil)
