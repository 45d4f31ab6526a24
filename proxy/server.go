// Package proxy is funnel's client side: it accepts Redis clients, keeps each
// client's state and reply order, answers what it can itself, and sends the
// rest through the upstream pool.
package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// Version is funnel's version, shown in INFO.
var Version = "dev"

// Options configure a Server.
type Options struct {
	MaxClients         int           // open client connections at most (default 10000)
	RequirePass        string        // funnel's own client password; empty: none
	Deny               []string      // more commands to refuse, e.g. "flushall" or "config|set"
	Limits             resp.Limits   // request size limits (default resp.DefaultLimits)
	MaxPipeline        int           // commands a client may have queued for replies (default 1024)
	ClientOutputLimit  int64         // reply bytes held for one client before it is closed (default 512 MiB)
	ClientWriteTimeout time.Duration // longest a reply write may block (default 30s)
	InfoTTL            time.Duration // how long an upstream INFO reply is reused (default 5s)
	MaxMultiBytes      int           // largest transaction funnel buffers between MULTI and EXEC (default 64 MiB)
	DisableCoalesce    bool          // do not merge identical reads in flight
	CacheRules         []CacheRule   // which keys' reads are cached, and for how long
	CacheScripts       []string      // SHA1s of scripts that only read (cacheable EVAL/EVALSHA)
	CacheMaxBytes      int64         // cache memory bound (default 64 MiB)
	CacheMaxValue      int           // largest reply cached (default 1 MiB)
	Logger             *slog.Logger
	Metrics            *metrics.Metrics
}

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
		o.ClientOutputLimit = 512 << 20
	}
	if o.ClientWriteTimeout <= 0 {
		o.ClientWriteTimeout = 30 * time.Second
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
	if o.InfoTTL <= 0 {
		o.InfoTTL = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server accepts clients and serves them through a pool.
type Server struct {
	pool    *pool.Pool
	opts    Options
	log     *slog.Logger
	metrics *metrics.Metrics
	denied  map[string]bool

	mu        sync.Mutex
	sessions  map[int64]*session
	listeners map[net.Listener]bool
	closing   bool

	nextID          atomic.Int64
	wg              sync.WaitGroup // sessions and fetches
	infoCache       replyCache
	commandCache    replyCache
	version         atomic.Pointer[string]
	byCommand       sync.Map // command name -> *commandCounters
	hub             *hub
	dbPools         map[poolKey]*pool.Pool // pools other than the main one, made on first use; guarded by mu
	cache           *cache.Cache           // nil when neither coalescing nor caching is on
	readOnlyScripts map[string]bool        // lower-case SHA1s
	closingCh       chan struct{}          // closed when Shutdown begins
	stats           struct{ clientCommands, upstreamCommands, localReplies atomic.Int64 }
}

// New returns a server that sends upstream work to p.
func New(p *pool.Pool, opts Options) *Server {
	opts.setDefaults()
	srv := &Server{
		pool: p, opts: opts, log: opts.Logger, metrics: opts.Metrics,
		denied:    map[string]bool{},
		sessions:  map[int64]*session{},
		listeners: map[net.Listener]bool{},
		closingCh: make(chan struct{}),
		dbPools:   map[poolKey]*pool.Pool{},
	}
	srv.hub = newHub(srv)
	srv.readOnlyScripts = map[string]bool{}
	for _, sha := range opts.CacheScripts {
		srv.readOnlyScripts[strings.ToLower(strings.TrimSpace(sha))] = true
	}
	if !opts.DisableCoalesce || len(opts.CacheRules) > 0 {
		srv.cache = cache.New(opts.CacheMaxBytes, opts.CacheMaxValue)
		if opts.Metrics != nil {
			opts.Metrics.WatchCache(srv.cache.Stats)
		}
	}
	for _, d := range opts.Deny {
		srv.denied[strings.ToLower(strings.ReplaceAll(strings.TrimSpace(d), " ", "|"))] = true
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
		if err != nil {
			srv.mu.Lock()
			closing := srv.closing
			srv.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http does, rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			srv.log.Warn("accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		srv.accept(conn)
	}
}

// accept starts a session for conn, or turns it away when funnel is full.
func (srv *Server) accept(conn net.Conn) {
	srv.mu.Lock()
	if srv.closing || len(srv.sessions) >= srv.opts.MaxClients {
		closing := srv.closing
		srv.mu.Unlock()
		reason := "max_clients"
		if closing {
			reason = "shutdown"
		} else {
			// Redis's own words, then close, as Redis does.
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = conn.Write([]byte("-ERR max number of clients reached\r\n"))
		}
		srv.metrics.ClientsClosed.WithLabelValues(reason).Inc()
		conn.Close()
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(true)
	}
	s := newSession(srv, conn, srv.nextID.Add(1))
	srv.sessions[s.id] = s
	srv.wg.Add(1)
	srv.mu.Unlock()
	srv.metrics.ClientsAccepted.Inc()
	srv.metrics.ClientConnections.Inc()
	go func() {
		defer srv.wg.Done()
		s.serve()
		srv.mu.Lock()
		delete(srv.sessions, s.id)
		srv.mu.Unlock()
		srv.metrics.ClientConnections.Dec()
	}()
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
	slicesSortByID(out)
	return out
}

func (srv *Server) sessionCount() int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.sessions)
}

// Shutdown stops accepting clients, stops reading new commands, and waits
// until every command already read has its reply written, or until ctx
// ends; then it closes every client. It does not close the pool.
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
		s.draining.Store(true)
		// Wake a reader blocked in Read; it sees draining and stops.
		_ = s.conn.SetReadDeadline(time.Now())
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
			s.kill("shutdown")
		}
		srv.mu.Unlock()
		<-done
		err = ctx.Err()
	}
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
