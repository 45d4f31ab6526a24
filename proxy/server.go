// Package proxy is funnel's client side: it accepts Redis clients, keeps each
// client's state and reply order, answers what it can itself, and sends the
// rest through the upstream pool.
//
// Where one client is kept from hurting another:
//   - resp parses requests exactly as redis-server does, so what funnel
//     forwards (in canonical form) is parsed the same way upstream, and
//     what Redis would reject never reaches a shared connection;
//   - router.go applies Redis's own checks (unknown command, arity, NOAUTH,
//     MULTI and subscribed-mode rules) before any handler sees arguments,
//     and closes a client that speaks HTTP (cross-protocol attacks);
//   - dispatch.go keeps the reader off every wait, so a client that leaves
//     is noticed at once and its unsent commands are cancelled;
//   - the cache (caching.go) keeps a write's keys pending until its reply,
//     so no client reads around another's write;
//   - output.go writes replies without ever making a completer wait on a
//     slow client; memory.go and the per-client output limit bound what is
//     held, per client and in total;
//   - every goroutine that runs session code recovers a panic by closing
//     only that session.
package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus"
)

// Version is funnel's version, shown in INFO.
var Version = "dev"

// Options configure a Server.
type Options struct {
	MaxClients         int           // open client connections at most (default 10000)
	RequirePass        string        // funnel's own client password; empty: none
	Deny               []string      // more commands to refuse, e.g. "flushall" or "config|set"
	Limits             resp.Limits   // request size limits (default resp.DefaultLimits)
	MaxPipeline        int           // commands a client may have without replies before funnel stops reading it (default 1024)
	ClientOutputLimit  int64         // reply bytes held for one client before it is closed (default 512 MiB)
	ClientWriteTimeout time.Duration // longest a reply write may block (default 30s)
	MaxMemory          int64         // request and reply bytes held for all clients before funnel stops reading (default 1 GiB)
	// ExclusiveWait bounds the wait for an exclusive-lane connection: a
	// WATCH or blocking command that gets none in time is answered with a
	// funnel: error (a blocking command whose own timeout is shorter gets
	// Redis's timeout reply instead). Default 10s.
	ExclusiveWait time.Duration
	// InfoTTL is how long a copy of the upstream's INFO may answer the
	// INFO a new connection sends before its first data command (default
	// 60s; negative: never, every INFO is fetched). Any later INFO is
	// fetched anew.
	InfoTTL         time.Duration
	MaxMultiBytes   int          // largest transaction funnel buffers between MULTI and EXEC (default 64 MiB)
	DisableCoalesce bool         // do not merge identical reads in flight
	CacheRules      []CacheRule  // which keys' reads are cached, and for how long
	AbsorbRules     []AbsorbRule // which hashes' idempotent HSETs funnel may answer itself (opt-in; see AbsorbRule)
	ShareWaits      []string     // globs of keys whose blocking waits clients share (opt-in; see waitHub)
	// WaitLinger is how long a shared sorted-set pop stays upstream after
	// its last waiter left, for the next to join (see waitHub); 0 means
	// 30 s, negative means not at all.
	WaitLinger   time.Duration
	CacheScripts []string // SHA1s of scripts that only read (cacheable EVAL/EVALSHA)
	// Preset names a preset in Presets whose rules add to CacheRules,
	// AbsorbRules, ShareWaits and CacheScripts (see Preset.Apply); New
	// logs an unknown name and ignores it.
	Preset        string
	CacheMaxBytes int64 // cache memory bound (default 64 MiB)
	CacheMaxValue int   // largest reply cached (default 1 MiB)
	Logger        *slog.Logger
	Metrics       *metrics.Metrics
}

// DefaultInfoTTL is Options.InfoTTL's default.
const DefaultInfoTTL = 60 * time.Second

const (
	defaultClientOutputLimit  = 512 << 20
	defaultClientWriteTimeout = 30 * time.Second
)

func (o *Options) setDefaults() {
	if o.MaxClients <= 0 {
		o.MaxClients = 10000
	}
	if o.Limits.MaxBulk <= 0 {
		o.Limits = resp.DefaultLimits
	}
	if o.MaxPipeline <= 0 {
		o.MaxPipeline = 1024
	}
	if o.ClientOutputLimit <= 0 {
		o.ClientOutputLimit = defaultClientOutputLimit
	}
	if o.ClientWriteTimeout <= 0 {
		o.ClientWriteTimeout = defaultClientWriteTimeout
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = 1 << 30
	}
	if o.ExclusiveWait <= 0 {
		o.ExclusiveWait = 10 * time.Second
	}
	if o.InfoTTL == 0 {
		o.InfoTTL = DefaultInfoTTL
	}
	if o.MaxMultiBytes <= 0 {
		o.MaxMultiBytes = 64 << 20
	}
	if o.CacheMaxBytes <= 0 {
		o.CacheMaxBytes = 64 << 20
	}
	if o.CacheMaxValue <= 0 {
		o.CacheMaxValue = 1 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New(prometheus.NewRegistry())
	}
}

// Server accepts clients and serves them through a pool.
type Server struct {
	pool    *pool.Pool
	opts    Options // its reloadable fields are read only by New: see settings
	log     *slog.Logger
	metrics *metrics.Metrics
	mem     *memoryBudget
	// settings are the reloadable settings in force (reload.go); reloadMu
	// serialises Reload.
	settings atomic.Pointer[settings]
	reloadMu sync.Mutex
	latency  [numRoutes]prometheus.Observer

	mu        sync.Mutex
	sessions  map[int64]*session
	listeners map[net.Listener]bool
	closing   bool
	dbPools   map[poolKey]*pool.Pool // pools other than the main one, made on first use

	nextID         atomic.Int64
	wg             sync.WaitGroup // sessions and the goroutines they start
	blockedClients atomic.Int64   // clients with a blocking command waiting or blocked
	infoCache      replyCache
	commandCache   replyCache
	version        atomic.Pointer[string]
	validDBs       sync.Map // db index -> true, once the upstream accepted SELECT of it
	hub            *hub
	cache          *cache.Cache // nil when neither coalescing nor caching is on
	scripts        *scriptBook
	watches        watchSet // keys funnel's clients WATCH
	waits          *waitHub
	closingCh      chan struct{} // closed when Shutdown begins
	crossLogged    atomic.Int64  // when a cross-protocol attack was last logged (unix seconds)
	// loops read the clients, one per core funnel runs Go code on
	// (GOMAXPROCS, --procs), started with the first client; guarded by mu.
	loops    []*loop
	nextLoop int
}

// New returns a server that sends upstream work to p.
func New(p *pool.Pool, opts Options) *Server {
	opts.setDefaults()
	srv := &Server{
		pool: p, opts: opts, log: opts.Logger, metrics: opts.Metrics,
		sessions:  map[int64]*session{},
		listeners: map[net.Listener]bool{},
		closingCh: make(chan struct{}),
		dbPools:   map[poolKey]*pool.Pool{},
	}
	srv.mem = newMemoryBudget(opts.MaxMemory, opts.Metrics)
	for k := range srv.latency {
		srv.latency[k] = opts.Metrics.Latency.WithLabelValues(routeKind(k).String())
	}
	opts.Metrics.WatchInFlight(srv.inFlight)
	srv.hub = newHub(srv)
	srv.waits = newWaitHub(srv)
	srv.scripts = newScriptBook()
	r := Reloadable{
		CacheRules: opts.CacheRules, AbsorbRules: opts.AbsorbRules, ShareWaits: opts.ShareWaits,
		CacheScripts: opts.CacheScripts, Preset: opts.Preset, Deny: opts.Deny,
		ClientOutputLimit: opts.ClientOutputLimit, ClientWriteTimeout: opts.ClientWriteTimeout,
	}
	st, err := newSettings(r)
	if err != nil {
		srv.log.Error("preset ignored", "err", err)
		r.Preset = ""
		st, _ = newSettings(r) // only the preset can fail
	}
	srv.settings.Store(st)
	if !opts.DisableCoalesce || len(st.cacheRules) > 0 || len(st.absorbRules) > 0 {
		srv.cache = cache.New(opts.CacheMaxBytes, opts.CacheMaxValue)
		opts.Metrics.WatchCache(srv.cache.Stats)
	}
	return srv
}

// Serve accepts clients on ln until Shutdown. It returns nil after Shutdown
// and the listener's error otherwise.
func (srv *Server) Serve(ln net.Listener) error {
	srv.mu.Lock()
	if srv.closing {
		srv.mu.Unlock()
		ln.Close()
		return nil
	}
	srv.listeners[ln] = true
	srv.mu.Unlock()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err == nil {
			err = srv.accept(conn)
		} else {
			srv.mu.Lock()
			closing := srv.closing
			srv.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return nil
			}
		}
		if err != nil {
			// Out of file descriptors and the like, for the accept or for
			// the loop's copy of the socket: wait a little, as net/http
			// does, rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			srv.log.Warn("accepting a client failed; retrying (raise the open files limit if this says too many open files)", "err", err, "retry_in", delay.String())
			time.Sleep(delay)
			continue
		}
		delay = 0
	}
}

// accept starts a session for conn, or turns it away when funnel is full.
// It returns an error when the session could not be made (conn is closed).
func (srv *Server) accept(conn net.Conn) error {
	srv.mu.Lock()
	if srv.closing || len(srv.sessions) >= srv.opts.MaxClients {
		closing := srv.closing
		srv.mu.Unlock()
		reason := closedMaxClients
		if closing {
			reason = closedShutdown
		} else {
			// Redis's own words, then close, as Redis does.
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = conn.Write(resp.AppendError(nil, "ERR max number of clients reached"))
		}
		srv.metrics.ClientsClosed.WithLabelValues(reason.String()).Inc()
		conn.Close()
		return nil
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(true)
	}
	_, err := srv.startSessionLocked(conn)
	srv.mu.Unlock()
	if err != nil {
		srv.metrics.ClientsClosed.WithLabelValues(closedEventLoop.String()).Inc()
		conn.Close()
		return err
	}
	srv.metrics.ClientsAccepted.Inc()
	srv.metrics.ClientConnections.Inc()
	return nil
}

// startSessionLocked makes the session of conn and hands it to a loop.
// srv.mu is held.
func (srv *Server) startSessionLocked(conn net.Conn) (*session, error) {
	l, err := srv.loopLocked()
	if err != nil {
		return nil, err
	}
	s, err := newSession(srv, conn, srv.nextID.Add(1), l)
	if err != nil {
		return nil, err
	}
	srv.sessions[s.id] = s
	srv.wg.Add(1) // done by s.finish
	l.post(loopTask{kind: addClient, s: s})
	return s, nil
}

// loopLocked returns the loop for the next client, round robin, starting
// the loops with the first client. srv.mu is held.
func (srv *Server) loopLocked() (*loop, error) {
	if srv.loops == nil {
		for range max(1, runtime.GOMAXPROCS(0)) {
			l, err := newLoop(srv)
			if err != nil {
				srv.stopLoopsLocked()
				return nil, err
			}
			srv.loops = append(srv.loops, l)
			go l.run()
		}
	}
	i := srv.nextLoop % len(srv.loops)
	srv.nextLoop++
	if srv.loops[i].hasFailed() {
		// Its clients were closed; new ones get a fresh loop.
		fresh, err := newLoop(srv)
		if err != nil {
			return nil, err
		}
		srv.loops[i] = fresh
		go fresh.run()
	}
	return srv.loops[i], nil
}

// stopLoopsLocked ends the loops once no client is left. srv.mu is held.
func (srv *Server) stopLoopsLocked() {
	for _, l := range srv.loops {
		l.post(loopTask{kind: stopLoop})
		<-l.done
	}
	srv.loops = nil
}

// recoverPanic, deferred in every goroutine that runs session code, turns
// a panic into the close of that session alone (s may be nil for the hub),
// logged with its stack and counted. A panic is always a bug.
func (srv *Server) recoverPanic(s *session) {
	v := recover()
	if v == nil {
		return
	}
	srv.metrics.Panics.Inc()
	var id int64
	if s != nil {
		id = s.id
		s.kill(closedPanic)
	}
	srv.log.Error("panic recovered: only the client concerned was closed; this is a bug in funnel, please report it with this stack",
		"id", id, "panic", v, "stack", string(debug.Stack()))
}

// crossProtocol logs a client that sent an HTTP line, at most once a minute
// as Redis does, so an attack cannot flood the log.
func (srv *Server) crossProtocol(s *session) {
	srv.countError(errCrossProtocol)
	now := time.Now().Unix()
	if last := srv.crossLogged.Load(); now-last > 60 && srv.crossLogged.CompareAndSwap(last, now) {
		srv.log.Warn("possible security attack: a client sent POST or Host:, as a web page in a browser can be made to; funnel closed it, and nothing it sent after that line ran (this is logged at most once a minute)",
			"addr", s.info.addr)
	}
}

// maxDBPools bounds how many pools besides the main one a funnel makes.
const maxDBPools = 64

// poolKey names a pool by what its connections are set to: a db and a RESP
// version.
type poolKey struct{ db, proto int }

// poolFor returns the pool serving db in RESP version proto: the main pool
// for the URL's db in RESP2, or a pool of its own for another, made on first
// use and dialed lazily. It returns nil when too many pools are in use.
func (srv *Server) poolFor(db, proto int) *pool.Pool {
	if db == srv.pool.Upstream().DB && proto == 2 {
		return srv.pool
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	key := poolKey{db, proto}
	if p := srv.dbPools[key]; p != nil {
		return p
	}
	if len(srv.dbPools) >= maxDBPools {
		return nil
	}
	up := srv.pool.Upstream()
	up.DB, up.Proto = db, proto
	p := pool.New(up, srv.pool.Options())
	srv.dbPools[key] = p
	return p
}

// dropPool closes the pool for db and proto if it is p. It waits for the
// pool's connections to end: not on a session's reader.
func (srv *Server) dropPool(db, proto int, p *pool.Pool) {
	srv.mu.Lock()
	key := poolKey{db, proto}
	if srv.dbPools[key] != p {
		srv.mu.Unlock()
		return
	}
	delete(srv.dbPools, key)
	srv.mu.Unlock()
	p.Close(context.Background())
}

// sharedConnsUp counts the shared upstream connections up now, in every
// pool (each db and RESP version in use).
func (srv *Server) sharedConnsUp() int {
	n := srv.pool.UpCount()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, p := range srv.dbPools {
		n += p.UpCount()
	}
	return n
}

func (srv *Server) isClosing() bool { return isClosed(srv.closingCh) }

// sessionsSnapshot returns the open sessions, oldest first.
func (srv *Server) sessionsSnapshot() []*session {
	srv.mu.Lock()
	out := make([]*session, 0, len(srv.sessions))
	for _, s := range srv.sessions {
		out = append(out, s)
	}
	srv.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// inFlight counts the requests funnel's clients have upstream now, for
// funnel_inflight_requests.
func (srv *Server) inFlight() int64 {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	var n int64
	for _, s := range srv.sessions {
		n += s.upInFlight.Load()
	}
	return n
}

func (srv *Server) sessionCount() int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.sessions)
}

// session returns the open session with the id, or nil.
func (srv *Server) session(id int64) *session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.sessions[id]
}

// Shutdown stops accepting clients and reading new commands, and waits
// until every command already read has its reply written, blocked ones
// included, or until ctx ends; then it closes every client that is left
// (it sees EOF). It does not close the pool.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.mu.Lock()
	if !srv.closing {
		close(srv.closingCh)
	}
	srv.closing = true
	for ln := range srv.listeners {
		ln.Close()
	}
	for _, s := range srv.sessions {
		s.drain()
	}
	srv.mu.Unlock()
	done := make(chan struct{})
	go func() { srv.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		srv.mu.Lock()
		for _, s := range srv.sessions {
			s.kill(closedShutdown)
		}
		srv.mu.Unlock()
		<-done
		err = ctx.Err()
	}
	srv.mu.Lock()
	srv.stopLoopsLocked()
	srv.mu.Unlock()
	// The pools for other dbs are the server's own; the main one is the
	// caller's to close.
	srv.mu.Lock()
	pools := srv.dbPools
	srv.dbPools = map[poolKey]*pool.Pool{}
	srv.mu.Unlock()
	for _, p := range pools {
		p.Close(ctx)
	}
	return err
}

// drain makes the session read no new command and close once every reply
// to what it has read is written.
func (s *session) drain() {
	s.draining.Store(true)
	s.sock.loop.post(loopTask{kind: drainClient, s: s})
	// Resume a reading paused for room; it sees draining.
	s.roomMade()
}
