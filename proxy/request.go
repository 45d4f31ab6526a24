package proxy

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// request is one client command on its way through funnel. The session's
// input makes it and queues it on the output in arrival order; its dispatch
// routes it; whoever answers it (a local handler, an upstream connection, a
// fetch) completes it; the output writes the replies in queue order and
// releases each request once written.
type request struct {
	pool.Request
	s        *session
	next     *request // the output's queue
	info     *command.Info
	spec     *routeSpec
	counters *metrics.CommandCounters
	route    routeKind
	start    time.Time
	args     [][]byte // views into Raw

	// state is pending, done or orphaned (see complete and output.shut).
	state atomic.Int32
	reply []byte       // the reply, in storage of r's own
	view  []byte       // or a reply r does not own: a cache entry's
	share *sharedReply // or one shared with the readers that joined r's read
	owner flightOwner  // where the read r leads went (see cacheReader.Lead)
	err   error

	// upstream marks a request that counts in its session's in-flight total
	// until it completes (the stickiness rule).
	upstream bool
	// cancellable lets the pool drop r unsent once its client is gone: reads,
	// and blocking commands, which must not pop for nobody.
	cancellable bool
	// blocked marks a blocking command counted in the server's blocked clients.
	blocked bool
	// reserved is what r reserved in the memory budget for its reply.
	reserved int64
	// suppress drops the reply (CLIENT REPLY OFF or SKIP).
	suppress bool
	// closeAfter closes the client once this reply is written.
	closeAfter closeReason
	// lease is the exclusive connection r was sent on, if any.
	lease *lease
	// adjust changes a successful upstream reply (see finish).
	adjust replyAdjust
	// override is the reply adjustOverride puts in place of the upstream's.
	override []byte
	// pubsubKind marks a SUBSCRIBE's confirmation or a message that waits
	// in line (see pushDirect).
	pubsubKind pubsubKind
	// flight is the cache flight r leads: others may be waiting on its reply.
	flight *cache.Flight
	// writes are the cache writes r began, ended when its reply is in.
	writes  []cache.Write
	stripes []uint32 // storage for a single write's stripes
	// oneShot is a connection opened for r alone (SCRIPT KILL), closed with it.
	oneShot *pool.Conn
	// wait is the blocking command's state for CLIENT UNBLOCK, ended with it.
	wait *blockingWait
	// undelivered, when set, is told of a reply funnel dropped because the
	// client left before it was written: a shared pop's element, which it
	// puts back (see waitHub). Only a successful reply is ever passed.
	undelivered func(reply []byte)
	// absorb, on an HSET funnel could not absorb, teaches funnel the values
	// if it succeeds (see tryAbsorb).
	absorb *absorbPlan

	rawBuf []byte // reusable storage for Raw
	argBuf [][]byte
	// mem is the bytes of Raw and of r's own reply charged to the memory
	// budget, given back on release.
	mem int64
}

// Request states.
const (
	pending int32 = iota
	done
	orphaned // its client's output was shut before it completed
)

// replyAdjust is a change funnel makes to a successful upstream reply.
type replyAdjust uint8

const (
	adjustNone     replyAdjust = iota
	adjustOverride             // replace it with r.override (RESET answers +RESET after UNWATCH)
	adjustUnwrap               // take the one reply out of an EXEC (a blocking command run in MULTI)
	adjustPublish              // count funnel's own subscribers, not the hub (PUBLISH)
)

var requestPool = sync.Pool{New: func() any { return new(request) }}

// maxKeptBuf is the largest buffer a recycled request keeps.
const maxKeptBuf = 64 << 10

// newRequest makes the request for cmd, copying its bytes out of the
// reader's buffer, or taking the buffer when the reader handed it over.
// Only the loop calls it, as it reads.
func newRequest(s *session, cmd resp.Command) *request {
	r := requestPool.Get().(*request)
	r.s = s
	r.start = s.sock.readAt
	if cmd.Owned {
		r.Raw = cmd.Raw
		r.args = append(r.argBuf[:0], cmd.Args...)
	} else {
		r.rawBuf = append(r.rawBuf[:0], cmd.Raw...)
		r.Raw = r.rawBuf
		r.args = cmd.Rebase(r.Raw, r.argBuf)
	}
	r.argBuf = r.args
	r.mem = int64(len(r.Raw))
	s.srv.mem.add(r.mem)
	r.Done = r
	return r
}

// newReply makes a request that is not a command: a reply funnel queues on
// its own (a protocol error, a pub/sub message in line).
func newReply(s *session, route routeKind) *request {
	r := requestPool.Get().(*request)
	r.s = s
	r.start = time.Now()
	r.route = route
	r.Done = r
	return r
}

// release recycles r. Only the output calls it, once r's reply is written
// or dropped, or r's completer once r is orphaned: when nothing else can
// still hold r.
func (r *request) release() {
	if r.share != nil {
		r.share.release()
	}
	if r.mem != 0 {
		r.s.srv.mem.add(-r.mem)
	}
	// The arguments point into Raw, which may be a huge buffer of its own:
	// no recycled request may keep it alive.
	clear(r.argBuf[:cap(r.argBuf)])
	clear(r.writes) // nor a cache write's stripes or run
	reply, raw, argBuf, stripes, writes := r.reply[:0], r.rawBuf[:0], r.argBuf[:0], r.stripes[:0], r.writes[:0]
	if cap(reply) > maxKeptBuf {
		reply = nil
	}
	if cap(raw) > maxKeptBuf {
		raw = nil
	}
	if cap(writes) > maxKeptWrites {
		writes = nil // a big transaction's
	}
	*r = request{reply: reply, rawBuf: raw, argBuf: argBuf, stripes: stripes, writes: writes}
	requestPool.Put(r)
}

// dropped tells r.undelivered of r's reply, which will not be written.
func (r *request) dropped() {
	if r.undelivered != nil && r.err == nil && !r.suppress {
		if b := r.replyBytes(); len(b) > 0 {
			r.undelivered(bytes.Clone(b))
		}
	}
}

// maxKeptWrites is the most cache writes a recycled request keeps room for.
const maxKeptWrites = 16

// replyBytes is the reply to write.
func (r *request) replyBytes() []byte {
	switch {
	case r.share != nil:
		return r.share.b
	case r.view != nil:
		return r.view
	}
	return r.reply
}

// sharedReply is one reply held once for every request that joined the
// same read.
type sharedReply struct {
	b    []byte
	refs atomic.Int32
	mem  *memoryBudget
}

// sharedReplies recycles shared replies: a joined read allocates nothing.
var sharedReplies = sync.Pool{New: func() any { return new(sharedReply) }}

func newSharedReply(b []byte, mem *memoryBudget) *sharedReply {
	sr := sharedReplies.Get().(*sharedReply)
	sr.b, sr.mem = append(sr.b[:0], b...), mem
	mem.add(int64(len(sr.b)))
	return sr
}

// release drops a reference; the last one recycles sr, so every holder
// must be done reading sr.b when it releases.
func (sr *sharedReply) release() {
	switch n := sr.refs.Add(-1); {
	case n == 0:
		sr.mem.add(-int64(len(sr.b)))
		if cap(sr.b) > maxKeptBuf {
			sr.b = nil
		}
		sr.mem = nil
		sharedReplies.Put(sr)
	case n < 0:
		panic("funnel: shared reply released more often than it was held")
	}
}

// Cancelled implements pool.Canceller: a departed client's reads and
// blocking commands are not sent.
func (r *request) Cancelled() bool { return r.cancellable && r.s.isDead() }

// Complete implements pool.Completer.
func (r *request) Complete(reply []byte, err error) { r.complete(reply, err, nil) }

// CompleteBatched implements pool.BatchCompleter: as Complete, but the
// replies may wait in their sessions' buffers until the pool flushes batch.
func (r *request) CompleteBatched(reply []byte, err error, batch *pool.Batch) {
	r.complete(reply, err, batch)
}

// complete records r's outcome, and that of the readers that joined r's
// read, and sends what is ready. A panic here is a bug; it closes only the
// sessions concerned, never the upstream connection that delivered it.
func (r *request) complete(reply []byte, err error, batch *pool.Batch) {
	s := r.s
	defer s.srv.recoverPanic(s)
	flight := r.flight
	joiners, share := r.finish(reply, err, nil)
	s.out.ready(batch) // r may be recycled from here on
	for _, j := range joiners {
		jr := (*request)(j.(*cacheReader))
		js := jr.s
		func() {
			defer s.srv.recoverPanic(js)
			jr.finish(reply, err, share)
			js.out.ready(batch)
		}()
	}
	if flight != nil {
		s.srv.cache.Recycle(flight)
	}
}

// finish records r's outcome and marks it done. reply is only valid during
// the call: r keeps a copy, unless its client is gone. share, when set, is
// the copy the readers of one flight share. It returns the readers that
// joined r's read, for the caller to finish with the same outcome and the
// share it made for them.
func (r *request) finish(reply []byte, err error, share *sharedReply) (joiners []cache.Reader, _ *sharedReply) {
	s := r.s
	srv := s.srv
	if r.flight != nil {
		// The cache may keep the reply: before r is marked done, since
		// reply may be r's to reuse after that.
		joiners = srv.cache.Finish(r.flight, reply, err)
		if len(joiners) > 0 && err == nil {
			share = newSharedReply(reply, srv.mem)
			share.refs.Add(int32(len(joiners)))
		}
	}
	// The write's keys stop being pending before its client can see the
	// reply, so the client's next read is never served from before it.
	if r.absorb != nil && err == nil && len(r.writes) == 1 && !resp.IsError(reply) {
		r.learnHash(r.writes[0])
	}
	for _, w := range r.writes {
		srv.cache.EndWrite(w)
	}
	if r.blocked {
		srv.blockedClients.Add(-1)
	}
	if r.reserved > 0 {
		srv.mem.reserve(-r.reserved)
	}
	if r.oneShot != nil {
		r.oneShot.Close()
	}
	if r.wait != nil {
		s.endBlocking(r.wait)
	}
	if err != nil {
		r.err = err
		if share != nil && r.flight == nil {
			share.release()
		}
	} else {
		reply = r.adjusted(reply)
		switch {
		case s.isDead():
			// Nobody will read it: drop it as it arrives. A joiner drops
			// its reference; a leader took none.
			if share != nil && r.flight == nil {
				share.release()
			}
			if r.undelivered != nil {
				r.undelivered(bytes.Clone(reply))
			}
		case share != nil:
			if r.flight != nil {
				share.refs.Add(1) // the leader's own reference
			}
			r.share = share
			s.held(int64(len(share.b)))
		default:
			r.reply = append(r.reply[:0], reply...)
			r.mem += int64(len(r.reply))
			srv.mem.add(int64(len(r.reply)))
			s.held(int64(len(r.reply)))
		}
	}
	if r.upstream {
		s.upstreamDone(r, len(reply))
	}
	if !r.state.CompareAndSwap(pending, done) {
		// Orphaned: the output was shut, and r is this goroutine's to recycle.
		r.dropped()
		r.release()
	}
	return joiners, share
}

// completeLocal completes r with a reply funnel made, which r may keep
// without copying: a constant or a fresh buffer nobody else writes.
func (r *request) completeLocal(reply []byte) {
	s := r.s
	if r.blocked {
		s.srv.blockedClients.Add(-1)
		r.blocked = false
	}
	r.view = reply
	s.held(int64(len(reply)))
	if !r.state.CompareAndSwap(pending, done) {
		r.release()
		return
	}
	s.out.kick(!s.batching.Load())
}

// adjusted applies r.adjust to a successful upstream reply.
func (r *request) adjusted(reply []byte) []byte {
	switch r.adjust {
	case adjustOverride:
		if !resp.IsError(reply) {
			return r.override
		}
	case adjustUnwrap:
		inner := resp.SingleElement(reply)
		if bytes.Equal(inner, resp.NilBulk) && r.info != nil && (r.info.Name == "blmove" || r.info.Name == "brpoplpush") {
			// Inside MULTI these answer an empty list as LMOVE does, with a
			// nil bulk; blocked until their timeout, with Redis's timeout
			// reply, a nil array.
			return resp.NilArray
		}
		return inner
	case adjustPublish:
		if n, ok := resp.Int(reply); ok && len(r.args) > 1 {
			n = r.s.srv.hub.receivers(r.args[1], n, r.info.Name == "spublish")
			return resp.AppendInt(r.override[:0], n)
		}
	}
	return reply
}
