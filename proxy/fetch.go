package proxy

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/pool"
)

// replyCache keeps upstream replies to server-wide questions (INFO, COMMAND)
// that every new client asks, so they are fetched once per TTL rather than
// once per connection. Concurrent fetches of one question share one
// upstream request.
type replyCache struct {
	mu      sync.Mutex
	entries map[string]cachedReply
	flights map[string]*replyFlight
}

type cachedReply struct {
	reply []byte
	at    time.Time
}

// replyFlight is a fetch under way that others may wait for.
type replyFlight struct {
	started time.Time
	done    chan struct{}
	reply   []byte
	err     error
}

// maxReplyCacheEntries bounds the cache; distinct INFO section lists and
// COMMAND INFO arguments are few in practice.
const maxReplyCacheEntries = 256

// fresh, as a maxAge, means: never answer from the cache.
const fresh time.Duration = -1

// get returns the reply to raw (the command name, for the bill): from the
// cache when it is younger than maxAge (0: kept for good; fresh: never),
// else from p. A fetch already under way is shared if it started no
// earlier than since, so a reply never predates the request that asked.
// Error replies are not kept. key must tell apart replies p's RESP version
// shapes differently.
func (c *replyCache) get(srv *Server, p *pool.Pool, key, name string, raw []byte, maxAge time.Duration, since time.Time) ([]byte, error) {
	c.mu.Lock()
	if e, ok := c.entries[key]; ok && maxAge >= 0 && (maxAge == 0 || time.Since(e.at) < maxAge) {
		c.mu.Unlock()
		return e.reply, nil
	}
	if f := c.flights[key]; f != nil && !f.started.Before(since) {
		c.mu.Unlock()
		<-f.done
		return f.reply, f.err
	}
	f := &replyFlight{started: time.Now(), done: make(chan struct{})}
	if c.flights == nil {
		c.flights = map[string]*replyFlight{}
		c.entries = map[string]cachedReply{}
	}
	c.flights[key] = f
	c.mu.Unlock()

	f.reply, f.err = srv.fetch(p, name, raw)
	c.mu.Lock()
	if c.flights[key] == f {
		delete(c.flights, key)
	}
	if f.err == nil && len(f.reply) > 0 && f.reply[0] != '-' {
		if _, had := c.entries[key]; had || len(c.entries) < maxReplyCacheEntries {
			c.entries[key] = cachedReply{reply: f.reply, at: f.started}
		}
	}
	c.mu.Unlock()
	close(f.done)
	return f.reply, f.err
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

// fetch sends raw (the command name, for the bill) on any connection of p
// and waits for the reply. The pool answers every request within its reply
// timeout, so this cannot hang. It must not run on a session's reader.
func (srv *Server) fetch(p *pool.Pool, name string, raw []byte) ([]byte, error) {
	counters := srv.metrics.Command(name)
	counters.Upstream(1)
	done := fetchReply{ch: make(chan fetchResult, 1)}
	p.Submit(context.Background(), p.Pick(), &pool.Request{Raw: raw, Done: done, Duration: counters.UpstreamDuration()})
	res := <-done.ch
	return res.reply, res.err
}

// fetchAsync completes r with fn's result on a goroutine of its own, so the
// client's later commands are not held up; the output still sends r's
// reply in order.
func (srv *Server) fetchAsync(r *request, fn func() ([]byte, error)) {
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		defer srv.recoverPanic(r.s)
		reply, err := fn()
		if err != nil {
			r.Complete(nil, err)
			return
		}
		r.completeLocal(reply)
	}()
}
