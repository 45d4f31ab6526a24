package proxy

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"golang.org/x/sync/singleflight"
)

// replyCache keeps upstream replies to server-wide questions (INFO, COMMAND)
// that every new client asks, so they are fetched once per TTL rather than
// once per connection. Concurrent misses share one fetch.
type replyCache struct {
	mu      sync.Mutex
	entries map[string]cachedReply
	group   singleflight.Group
}

type cachedReply struct {
	reply []byte
	at    time.Time
}

// maxReplyCacheEntries bounds the cache; distinct INFO section lists and
// COMMAND INFO arguments are few in practice.
const maxReplyCacheEntries = 256

// get returns the reply to raw (the command name, for metrics), from the
// cache when it is younger than ttl (0: kept for good), else from p. Error
// replies are not kept. key must tell apart replies p's RESP version shapes
// differently.
func (c *replyCache) get(srv *Server, p *pool.Pool, key, name string, raw []byte, ttl time.Duration) ([]byte, error) {
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && (ttl == 0 || time.Since(e.at) < ttl) {
		return e.reply, nil
	}
	v, err, _ := c.group.Do(key, func() (any, error) {
		reply, err := srv.fetch(p, name, raw)
		if err != nil || len(reply) == 0 || reply[0] == '-' {
			return reply, err
		}
		c.mu.Lock()
		if c.entries == nil {
			c.entries = map[string]cachedReply{}
		}
		if _, had := c.entries[key]; had || len(c.entries) < maxReplyCacheEntries {
			c.entries[key] = cachedReply{reply: reply, at: time.Now()}
		}
		c.mu.Unlock()
		return reply, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// fetchReply receives one upstream reply for a fetch made by funnel itself.
type fetchReply struct {
	ch chan fetchResult
}

type fetchResult struct {
	reply []byte
	err   error
}

func (f fetchReply) Complete(reply []byte, err error) {
	f.ch <- fetchResult{reply: bytes.Clone(reply), err: err}
}

// fetch sends raw (the command name, for metrics) on any connection of p
// and waits for the reply. The pool answers every request within its reply
// timeout, so this cannot hang.
func (srv *Server) fetch(p *pool.Pool, name string, raw []byte) ([]byte, error) {
	srv.counters(name).upstream.Inc()
	srv.stats.upstreamCommands.Add(1)
	done := fetchReply{ch: make(chan fetchResult, 1)}
	p.Submit(context.Background(), p.Pick(), &pool.Request{Raw: raw, Done: done})
	res := <-done.ch
	return res.reply, res.err
}

// fetchAsync completes r with fn's result on a goroutine of its own, so the
// client's later commands are not held up; the writer still sends r's reply
// in order.
func (srv *Server) fetchAsync(r *request, fn func() ([]byte, error)) {
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		reply, err := fn()
		r.Complete(reply, err)
	}()
}

// infoWithFunnel lists INFO section arguments that include funnel's section.
var infoWithFunnel = map[string]bool{"all": true, "everything": true, "default": true, "funnel": true}

// cmdInfo answers INFO from the upstream's reply, fetched at most once per
// Options.InfoTTL for each list of sections, with a "# Funnel" section
// added. Clients read redis_version, loading and maxmemory_policy from it,
// so the upstream's text is kept as it is.
func cmdInfo(s *session, r *request, args [][]byte) {
	withFunnel, onlyFunnel := len(args) == 1, len(args) > 1
	for _, a := range args[1:] {
		sec := strings.ToLower(string(a))
		withFunnel = withFunnel || infoWithFunnel[sec]
		onlyFunnel = onlyFunnel && sec == "funnel"
	}
	srv := s.srv
	if onlyFunnel {
		r.Complete(s.verbatim(srv.funnelInfo()), nil)
		return
	}
	key := cacheKey(args) // args do not outlive this call
	p := s.pool
	srv.fetchAsync(r, func() ([]byte, error) {
		reply, err := srv.infoCache.get(srv, p, key, "info", r.Raw, srv.opts.InfoTTL)
		body, ok := textBody(reply)
		if err != nil || !ok {
			return reply, err
		}
		srv.noteVersion(body)
		if withFunnel {
			body = append(append(body[:len(body):len(body)], "\r\n"...), srv.funnelInfo()...)
		}
		return s.verbatim(body), nil
	})
}

// textBody returns the text of a bulk string reply (RESP2) or a verbatim
// string reply (RESP3), as INFO's; ok is false for any other reply.
func textBody(reply []byte) (body []byte, ok bool) {
	if len(reply) == 0 || (reply[0] != '$' && reply[0] != '=') {
		return nil, false
	}
	i := bytes.Index(reply, []byte("\r\n"))
	if i < 0 || len(reply) < i+4 {
		return nil, false
	}
	body = reply[i+2 : len(reply)-2]
	if reply[0] == '=' && len(body) >= 4 {
		body = body[4:] // the format, "txt:"
	}
	return body, true
}

// noteVersion remembers the upstream's redis_version for HELLO.
func (srv *Server) noteVersion(info []byte) {
	_, rest, ok := bytes.Cut(info, []byte("redis_version:"))
	if !ok {
		return
	}
	v, _, _ := bytes.Cut(rest, []byte("\r\n"))
	version := string(v)
	srv.version.Store(&version)
}

// upstreamVersion returns the upstream's redis_version, fetching INFO
// server from p the first time. When the upstream answers INFO with an error,
// that error reply comes back as refusal, to pass on as it is.
func (srv *Server) upstreamVersion(p *pool.Pool) (version string, refusal []byte, err error) {
	if v := srv.version.Load(); v != nil {
		return *v, nil, nil
	}
	raw := resp.AppendCommand(nil, []byte("INFO"), []byte("server"))
	reply, err := srv.infoCache.get(srv, p, "info\x00server", "info", raw, srv.opts.InfoTTL)
	if err != nil {
		return "", nil, err
	}
	body, ok := textBody(reply)
	if !ok {
		return "", reply, nil
	}
	srv.noteVersion(body)
	if v := srv.version.Load(); v != nil {
		return *v, nil, nil
	}
	return "unknown", nil, nil
}

// funnelInfo renders the "# Funnel" INFO section.
func (srv *Server) funnelInfo() []byte {
	var b []byte
	line := func(k string, v int64) {
		b = append(b, k...)
		b = append(b, ':')
		b = strconv.AppendInt(b, v, 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "# Funnel\r\n"...)
	b = append(b, "funnel_version:"+Version+"\r\n"...)
	line("funnel_connected_clients", int64(srv.sessionCount()))
	line("funnel_pool_size", int64(srv.pool.Size()))
	line("funnel_upstream_connections", int64(srv.sharedConnsUp()))
	line("funnel_client_commands", srv.stats.clientCommands.Load())
	line("funnel_upstream_commands", srv.stats.upstreamCommands.Load())
	line("funnel_local_replies", srv.stats.localReplies.Load())
	return srv.cacheInfo(b)
}
