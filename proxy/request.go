package proxy

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/pool"
)

// request is one client command on its way through funnel. The session's
// reader makes it and queues it in arrival order; whoever answers it (a
// local handler, an upstream connection, a fetch) calls Complete; the
// session's output sends the replies to the client in queue order.
type request struct {
	pool.Request
	s     *session
	name  string // canonical command name, for metrics
	route string // "local", "upstream", "refused" ...
	start time.Time

	reply []byte
	err   error
	done  atomic.Bool
	// upstream marks a request that counts in its session's in-flight total
	// until it completes (the stickiness rule).
	upstream bool
	// closeAfter closes the client once this reply is written (QUIT, a
	// protocol error, max clients).
	closeAfter  bool
	closeReason string
	// lease is the exclusive connection r was sent on, if any.
	lease *lease
	// override replaces a successful upstream reply (see forwardEnding).
	override []byte
	// unwrapExec takes the one reply out of an EXEC reply (see lastChance).
	unwrapExec bool
	// pubsubKind marks a SUBSCRIBE's confirmation or a message that waits
	// in line (see pushDirect).
	pubsubKind pubsubKind
	// flight is the cache flight r leads: others may be waiting on its reply.
	flight *cache.Flight

	rawBuf []byte // reusable storage for Raw
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

// maxKeptBuf is the largest buffer a recycled request keeps.
const maxKeptBuf = 64 << 10

func newRequest(s *session, raw []byte) *request {
	r := requestPool.Get().(*request)
	r.s = s
	r.start = time.Now()
	r.rawBuf = append(r.rawBuf[:0], raw...)
	r.Raw = r.rawBuf
	r.Done = r
	return r
}

// release recycles r. Only the output calls it, once r's reply is buffered,
// when nothing else can still hold r.
func (r *request) release() {
	reply, raw := r.reply[:0], r.rawBuf[:0]
	if cap(reply) > maxKeptBuf {
		reply = nil
	}
	if cap(raw) > maxKeptBuf {
		raw = nil
	}
	*r = request{reply: reply, rawBuf: raw}
	requestPool.Put(r)
}

// Complete implements pool.Completer: it keeps a copy of the reply, or the
// error, and sends the session's ready replies; so for the requests that
// joined r's read, if any.
func (r *request) Complete(reply []byte, err error) { r.complete(reply, err, nil) }

// CompleteBatched implements pool.BatchCompleter: as Complete, but the
// replies may wait in their sessions' buffers until the pool flushes batch.
func (r *request) CompleteBatched(reply []byte, err error, batch *pool.Batch) {
	r.complete(reply, err, batch)
}

func (r *request) complete(reply []byte, err error, batch *pool.Batch) {
	s := r.s
	joiners := r.finish(reply, err)
	s.sendReplies(batch) // r may be recycled from here on
	for _, j := range joiners {
		jr := (*request)(j.(*cacheReader))
		js := jr.s
		jr.finish(reply, err)
		js.sendReplies(batch)
	}
}

// finish records r's outcome and marks it done. It returns the readers
// that joined r's read, for the caller to complete with the same outcome.
func (r *request) finish(reply []byte, err error) (joiners []cache.Reader) {
	s := r.s
	if r.flight != nil {
		// The cache may keep the reply: before r is marked done, since
		// reply may be r's to reuse after that.
		joiners = s.srv.cache.Finish(r.flight, reply, err)
	}
	if err != nil {
		r.err = err
	} else {
		if r.override != nil && len(reply) > 0 && reply[0] != '-' {
			reply = r.override
		}
		if r.unwrapExec && bytes.HasPrefix(reply, []byte("*1\r\n")) {
			reply = reply[4:]
		}
		if s.pendingOut.Add(int64(len(reply))) > s.srv.opts.ClientOutputLimit {
			// The client is not reading its replies fast enough: cut it off
			// instead of letting its backlog grow without bound.
			s.kill("output_limit")
		}
		r.reply = append(r.reply[:0], reply...)
	}
	if r.upstream {
		s.srv.metrics.InFlight.Dec()
		if s.upInFlight.Add(-1) == 0 {
			if l := r.lease; l != nil && l.ending.Load() {
				l.release()
			}
			select {
			case s.idle <- struct{}{}:
			default:
			}
		}
	}
	r.done.Store(true)
	return joiners
}
