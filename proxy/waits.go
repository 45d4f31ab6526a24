package proxy

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/glob"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// Shared blocking waits (opt-in, by key: Options.ShareWaits). Clients that
// block on the same thing share one upstream wait, so N idle workers cost
// the upstream one blocking command per round instead of N:
//
//   - Identical XREAD ... BLOCK waits (same streams, same explicit IDs)
//     share one upstream XREAD, whose reply goes to every waiter: XREAD
//     consumes nothing.
//   - Blocking pops of one key (BLPOP, BRPOP, BZPOPMIN, BZPOPMAX with a
//     single key) share one upstream pop. Each element it returns goes to
//     the waiter that has waited longest, as Redis serves blocked clients,
//     and the pop is sent again while waiters remain.
//
// Each waiter's own timeout is kept by funnel, which answers it as Redis
// answers a timeout; the upstream wait lasts as long as the longest. No
// element is lost or given twice: an element comes only from the upstream
// pop's reply, which goes to exactly one waiter still connected and still
// waiting; when none is left (they left, or their timeouts passed) funnel
// ends the upstream pop early with CLIENT UNBLOCK, and an element that the
// pop took just before that is put back where it was (LPUSH, RPUSH or ZADD
// NX with its score), the one case where funnel writes on its own.
//
// A sorted-set pop (BZPOPMIN, BZPOPMAX) lingers instead: its upstream round
// lasts at least Options.WaitLinger, waiters are answered at their own
// timeouts by funnel, and the round is not ended when the last one leaves,
// so the next waiter joins it. An idle BullMQ worker waits drainDelay (5 s)
// on its marker key and comes straight back: it costs the upstream one pop
// per linger, not one per drainDelay. An element the pop takes while no
// waiter is there goes back with ZADD NX, which restores it exactly (a
// member added again meanwhile keeps its new score). A round in which no
// waiter came is the last.
type waitHub struct {
	srv *Server

	mu    sync.Mutex
	waits map[waitKey]*sharedWait
}

// waitKey names what waiters share: the command (for XREAD, all of it but
// the BLOCK value; for a pop, its name and key) on one pool.
type waitKey struct {
	pool *pool.Pool
	cmd  string
}

// sharedWait is one upstream wait and the clients waiting on it.
type sharedWait struct {
	hub       *waitHub
	key       waitKey
	pop       bool     // a blocking pop; else an XREAD
	args      [][]byte // the command, the timeout argument at timeoutAt
	timeoutAt int
	ms        bool // the timeout is in milliseconds

	// Guarded by hub.mu.
	waiters []*waiter     // oldest first
	running bool          // an upstream wait is in flight
	lease   *lease        // the exclusive connection it runs on, kept between rounds
	unblock bool          // CLIENT UNBLOCK was sent for the round in flight
	linger  time.Duration // the least round, for a sorted-set pop; else 0
	joined  bool          // a waiter came during the round in flight: a lingering wait goes on
	write   cache.Write
	writing bool
}

// waiter is a client blocked on a shared wait.
type waiter struct {
	r        *request
	deadline time.Time // zero: for ever
	done     chan struct{}
	answered bool
}

func newWaitHub(srv *Server) *waitHub { return &waitHub{srv: srv, waits: map[waitKey]*sharedWait{}} }

// shareable returns the key r would share a wait under, if it may: a
// command of the shared kinds, on a key an Options.ShareWaits rule names,
// outside a WATCH span.
func (s *session) shareable(r *request, bt blockTimeout) (waitKey, bool) {
	globs := s.srv.live().shareWaits
	if len(globs) == 0 || s.lease != nil || !bt.ok || r.info == nil {
		return waitKey{}, false
	}
	args := r.args
	switch r.info.Name {
	case "blpop", "brpop", "bzpopmin", "bzpopmax":
		if len(args) != 3 || !sharesWaits(globs, args[1]) {
			return waitKey{}, false
		}
		return waitKey{s.pool, r.info.Name + "\x00" + string(args[1])}, true
	case "xread":
		streams := -1
		for i := 1; i < len(args); i++ {
			if equalFold(args[i], "streams") {
				streams = i
				break
			}
			if equalFold(args[i], "count") || equalFold(args[i], "block") {
				i++
			}
		}
		n := len(args) - streams - 1
		if streams < 0 || n <= 0 || n%2 != 0 {
			return waitKey{}, false
		}
		for _, k := range args[streams+1 : streams+1+n/2] {
			if !sharesWaits(globs, k) {
				return waitKey{}, false
			}
		}
		for _, id := range args[streams+1+n/2:] {
			if equalFold(id, "$") || equalFold(id, "+") {
				return waitKey{}, false // "new entries from now": each waiter's own now
			}
		}
		var b bytes.Buffer
		for i, a := range args {
			if i != bt.index {
				b.Write(resp.AppendBulk(nil, bytes.ToLower(a)))
			}
		}
		return waitKey{s.pool, b.String()}, true
	}
	return waitKey{}, false
}

// sharesWaits reports whether one of globs (Options.ShareWaits) names key.
func sharesWaits(globs []string, key []byte) bool {
	for _, p := range globs {
		if glob.Match(p, string(key)) {
			return true
		}
	}
	return false
}

// waitShared blocks r on the shared wait for key, on the resumer, until it
// is answered, the client leaves, or CLIENT UNBLOCK ends it.
func (s *session) waitShared(ctx context.Context, r *request, key waitKey, bt blockTimeout, bw *blockingWait) {
	defer s.endBlocking(bw)
	if !s.awaitProgress(func() bool { return s.upInFlight.Load() == 0 || ctx.Err() != nil }, ctx.Done()) {
		r.Complete(nil, errSessionClosed)
		return
	}
	h := s.srv.waits
	w := &waiter{r: r, done: make(chan struct{})}
	if !bt.forever {
		w.deadline = time.Now().Add(bt.d)
	}
	sw := h.join(key, r, bt, w)
	// The upstream round ends when the longest waiter's timeout passes,
	// and then answers every waiter whose timeout passed. The waiter's own
	// timer, a little later, is for when that answer is late or the round
	// runs longer for another waiter. A lingering round outlasts its
	// waiters: there the timer is the answer, on time.
	var timeout <-chan time.Time
	if !bt.forever {
		grace := timeoutGrace
		if sw.linger > 0 {
			grace = 0
		}
		t := time.NewTimer(bt.d + grace)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-w.done:
		return
	case <-timeout:
		if h.leave(sw, w) {
			r.completeLocal(s.timeoutReply())
		}
	case <-ctx.Done():
		if !h.leave(sw, w) {
			return // answered meanwhile
		}
		var unblocked errUnblocked
		switch {
		case errors.As(context.Cause(ctx), &unblocked) && unblocked.mode == unblockError:
			r.completeLocal(resp.AppendError(nil, "UNBLOCKED client unblocked via CLIENT UNBLOCK"))
		case errors.As(context.Cause(ctx), &unblocked):
			r.completeLocal(s.timeoutReply())
		default:
			r.Complete(nil, errSessionClosed)
		}
	}
	<-w.done
}

// timeoutGrace is how late after its timeout a waiter may be answered:
// about Redis's own lateness (it checks timeouts 10 times a second).
const timeoutGrace = 250 * time.Millisecond

// timeoutReply is what Redis answers a blocking command whose timeout
// passed: a null array.
func (s *session) timeoutReply() []byte {
	if s.resp3() {
		return resp.Null
	}
	return resp.NilArray
}

// join adds w to the shared wait for key, starting one if none runs.
func (h *waitHub) join(key waitKey, r *request, bt blockTimeout, w *waiter) *sharedWait {
	h.mu.Lock()
	defer h.mu.Unlock()
	sw := h.waits[key]
	if sw != nil {
		h.srv.metrics.SharedWaitJoins.Add(1)
	} else {
		sw = &sharedWait{hub: h, key: key, pop: r.info.Name != "xread", timeoutAt: bt.index, ms: bt.ms}
		if r.info.Name == "bzpopmin" || r.info.Name == "bzpopmax" {
			sw.linger = h.srv.waitLinger()
		}
		for _, a := range r.args {
			sw.args = append(sw.args, bytes.Clone(a))
		}
		h.waits[key] = sw
	}
	sw.waiters = append(sw.waiters, w)
	sw.joined = true
	if !sw.running {
		sw.startLocked()
	}
	return sw
}

// leave takes w off sw, and reports whether w was still waiting (the
// caller answers it then). When no waiter is left, the upstream round is
// ended early.
func (h *waitHub) leave(sw *sharedWait, w *waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.answered {
		return false
	}
	w.answered = true
	close(w.done)
	for i, x := range sw.waiters {
		if x == w {
			sw.waiters = append(sw.waiters[:i], sw.waiters[i+1:]...)
			break
		}
	}
	if len(sw.waiters) == 0 && sw.running && !sw.unblock && sw.lease != nil && sw.linger == 0 {
		sw.unblock = true
		if id := sw.lease.conn.UpstreamID(); id != 0 {
			h.srv.wg.Add(1)
			go func() {
				defer h.srv.wg.Done()
				raw := resp.AppendCommand(nil, []byte("CLIENT"), []byte("UNBLOCK"), []byte(strconv.FormatInt(id, 10)), []byte("TIMEOUT"))
				_, _ = h.srv.fetch(sw.key.pool, "client|unblock", raw)
			}()
		}
	}
	return true
}

// answerLocked gives w its reply; hub.mu must be held.
func (w *waiter) answerLocked(reply []byte, err error) {
	if w.answered {
		return
	}
	w.answered = true
	w.r.Complete(reply, err)
	close(w.done)
}

// startLocked sends a round of the upstream wait, on the resumer of no
// client: a goroutine of the hub's. hub.mu must be held.
func (sw *sharedWait) startLocked() {
	sw.running, sw.unblock, sw.joined = true, false, false
	srv := sw.hub.srv
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		sw.round()
	}()
}

// round borrows a lane connection (or keeps the last one) and sends the
// wait, for as long as the longest waiter still waits.
func (sw *sharedWait) round() {
	h := sw.hub
	srv := h.srv
	h.mu.Lock()
	l := sw.lease
	h.mu.Unlock()
	if l == nil {
		lane := sw.key.pool.Lane()
		ctx, cancel := context.WithTimeout(context.Background(), srv.opts.ExclusiveWait)
		c, err := lane.Borrow(ctx)
		cancel()
		if err != nil {
			h.mu.Lock()
			for _, w := range sw.waiters {
				w.answerLocked(nil, laneError(err, srv.opts.ExclusiveWait))
			}
			sw.waiters, sw.running = nil, false
			delete(h.waits, sw.key)
			h.mu.Unlock()
			return
		}
		l = &lease{conn: c, lane: lane}
	}
	h.mu.Lock()
	sw.lease = l
	longest, forever := time.Duration(0), false
	now := time.Now()
	for _, w := range sw.waiters {
		if w.deadline.IsZero() {
			forever = true
		} else {
			longest = max(longest, w.deadline.Sub(now))
		}
	}
	if len(sw.waiters) == 0 && sw.linger == 0 {
		sw.endLocked()
		h.mu.Unlock()
		return
	}
	longest = max(longest, sw.linger)
	args := append([][]byte(nil), sw.args...)
	timeout := pool.NoTimeout
	switch {
	case forever:
		args[sw.timeoutAt] = []byte("0")
	default:
		longest = max(longest, time.Millisecond)
		timeout = longest + blockMargin
		if sw.ms {
			args[sw.timeoutAt] = strconv.AppendInt(nil, longest.Milliseconds()+1, 10)
		} else {
			args[sw.timeoutAt] = strconv.AppendFloat(nil, math.Ceil(longest.Seconds()*1000)/1000, 'f', 3, 64)
		}
	}
	if sw.pop && srv.cache != nil {
		sw.write = srv.cache.BeginWrite(sw.key.pool.Upstream().DB, args[1:2], time.Time{}, nil)
		sw.writing = true
	}
	h.mu.Unlock()
	srv.metrics.Command(string(bytes.ToLower(args[0]))).Upstream(1)
	srv.pool.Submit(context.Background(), l.conn, &pool.Request{Raw: resp.AppendCommand(nil, args...), Timeout: timeout, Done: sw})
}

// Complete implements pool.Completer: a round of the upstream wait ended.
func (sw *sharedWait) Complete(reply []byte, err error) {
	h := sw.hub
	srv := h.srv
	h.mu.Lock()
	defer h.mu.Unlock()
	if sw.writing {
		srv.cache.EndWrite(sw.write)
		sw.writing = false
	}
	sw.running = false
	isNull := err == nil && (bytes.Equal(reply, resp.NilArray) || bytes.Equal(reply, resp.Null))
	switch {
	case err != nil:
		// The connection failed: every waiter hears it, as each would have
		// on a connection of its own.
		for _, w := range sw.waiters {
			w.answerLocked(nil, err)
		}
		sw.waiters = nil
		if sw.lease != nil {
			sw.lease.discard()
			sw.lease = nil
		}
	case isNull:
		// The round's timeout passed (or CLIENT UNBLOCK ended it): the
		// waiters whose own timeouts passed get the timeout reply.
		now := time.Now().Add(10 * time.Millisecond)
		keep := sw.waiters[:0]
		for _, w := range sw.waiters {
			if !w.deadline.IsZero() && !w.deadline.After(now) {
				w.answerLocked(reply, nil)
				continue
			}
			keep = append(keep, w)
		}
		sw.waiters = keep
	case sw.pop:
		given := false
		for len(sw.waiters) > 0 && !given {
			w := sw.waiters[0]
			sw.waiters = sw.waiters[1:]
			if w.answered || w.r.s.isDead() {
				continue
			}
			// Should the client leave before the element is written to
			// it, the element goes back.
			w.r.undelivered = sw.restore
			w.answerLocked(reply, nil)
			given = true
		}
		if !given {
			sw.restore(reply)
		}
	default: // XREAD: every waiter gets the entries
		for _, w := range sw.waiters {
			w.answerLocked(reply, nil)
		}
		sw.waiters = nil
	}
	if len(sw.waiters) > 0 || err == nil && sw.joined && sw.linger > 0 {
		sw.startLocked()
		return
	}
	sw.endLocked()
}

// waitLinger is Options.WaitLinger with its default.
func (srv *Server) waitLinger() time.Duration {
	switch d := srv.opts.WaitLinger; {
	case d == 0:
		return 30 * time.Second
	case d < 0:
		return 0
	default:
		return d
	}
}

// endLocked gives the connection back and forgets the shared wait.
func (sw *sharedWait) endLocked() {
	if sw.lease != nil {
		sw.lease.release()
		sw.lease = nil
	}
	if sw.hub.waits[sw.key] == sw {
		delete(sw.hub.waits, sw.key)
	}
}

// restore puts back an element the upstream pop took when no waiter was
// left to take it, or whose waiter left before it was written (putBack).
// It touches nothing hub.mu guards.
func (sw *sharedWait) restore(reply []byte) {
	name := string(bytes.ToLower(sw.args[0]))
	if end, ok := popEndOf(name, sw.args); ok {
		putBack(sw.hub.srv, sw.key.pool, name, end, reply)
	}
}

// popEnd is where a blocking pop takes its elements from, and so where
// putBack returns them.
type popEnd uint8

const (
	popHead   popEnd = iota // the head of a list (BLPOP, BLMPOP ... LEFT)
	popTail                 // the tail of a list (BRPOP, BLMPOP ... RIGHT)
	popSorted               // a sorted set, by score (BZPOPMIN, BZPOPMAX, BZMPOP)
)

// popEndOf returns where the blocking pop name (in lower case) with args
// takes its elements from; ok is false for a command putBack cannot undo
// (BLMOVE and BRPOPLPUSH move their element, which is then not lost).
func popEndOf(name string, args [][]byte) (end popEnd, ok bool) {
	switch name {
	case "blpop":
		return popHead, true
	case "brpop":
		return popTail, true
	case "bzpopmin", "bzpopmax", "bzmpop":
		return popSorted, true
	case "blmpop": // BLMPOP timeout numkeys key [key ...] LEFT|RIGHT [COUNT count]
		if len(args) < 3 {
			return 0, false
		}
		n, err := strconv.Atoi(string(args[2]))
		if err != nil || n <= 0 || n >= len(args)-3 { // compared so: 3+n could overflow
			return 0, false
		}
		switch {
		case equalFold(args[3+n], "left"):
			return popHead, true
		case equalFold(args[3+n], "right"):
			return popTail, true
		}
	}
	return 0, false
}

// putBack puts back what a blocking pop (name, in lower case) took for a
// client that was gone before it was written: at the head of the list for
// BLPOP and BLMPOP ... LEFT, at its tail for BRPOP and BLMPOP ... RIGHT,
// in the order they were in; with their scores for the sorted-set pops
// (ZADD NX: a member added again since keeps its new score, as it would
// have had the pop not happened). It is the one write funnel makes on its
// own, billed like any.
func putBack(srv *Server, p *pool.Pool, name string, end popEnd, reply []byte) {
	cmd, raw, key := putBackCommand(name, end, reply)
	if raw == nil {
		return
	}
	srv.log.Info("put back what a blocking pop took for a client that had left", "command", name, "key", resp.Quote(key, 64))
	// The put-back is a write like any: its key is pending until it is in,
	// so no cached read of the key from before it is served after it.
	var w cache.Write
	if srv.cache != nil {
		w = srv.cache.BeginWriteKeepingTTL(p.Upstream().DB, [][]byte{key}, nil)
	}
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		_, _ = srv.fetch(p, cmd, raw)
		if srv.cache != nil {
			srv.cache.EndWrite(w)
		}
	}()
}

// putBackCommand returns the command that undoes the pop whose reply is
// reply (its name for the metrics, and the command), and the key; raw is
// nil when the reply popped nothing (a timeout) or is not a pop's.
func putBackCommand(name string, end popEnd, reply []byte) (cmd string, raw, key []byte) {
	key, items := popped(name, reply)
	if len(items) == 0 {
		return "", nil, nil
	}
	switch end {
	case popHead, popTail:
		// The elements come in the order they were popped, the first from
		// the very end: pushed back in reverse, each lands where it was.
		cmd = "lpush"
		args := [][]byte{[]byte("LPUSH"), key}
		if end == popTail {
			cmd, args[0] = "rpush", []byte("RPUSH")
		}
		for i := len(items) - 1; i >= 0; i-- {
			args = append(args, items[i])
		}
		return cmd, resp.AppendCommand(nil, args...), key
	default: // items are member, score pairs
		if len(items)%2 != 0 {
			return "", nil, nil
		}
		args := [][]byte{[]byte("ZADD"), key, []byte("NX")}
		for i := 0; i < len(items); i += 2 {
			args = append(args, items[i+1], items[i])
		}
		return "zadd", resp.AppendCommand(nil, args...), key
	}
}

// popped returns the key and what a blocking pop's reply holds: the
// elements of a list pop, or member, score pairs of a sorted-set pop.
// A reply with nothing popped gives no items.
func popped(name string, reply []byte) (key []byte, items [][]byte) {
	switch name {
	case "blpop", "brpop", "bzpopmin", "bzpopmax": // key, element [, score]
		parts := resp.FlatArray(reply)
		if len(parts) < 2 {
			return nil, nil
		}
		return parts[0], parts[1:]
	case "blmpop", "bzmpop": // key, [element ...] or key, [[member, score] ...]
		top, ok := resp.Elements(reply)
		if !ok || len(top) != 2 {
			return nil, nil
		}
		key, ok := resp.Text(top[0])
		if !ok {
			return nil, nil
		}
		if name == "blmpop" {
			return key, resp.FlatArray(top[1])
		}
		pairs, _ := resp.Elements(top[1])
		for _, pair := range pairs {
			ms := resp.FlatArray(pair)
			if len(ms) != 2 {
				return nil, nil
			}
			items = append(items, ms...)
		}
		return key, items
	}
	return nil, nil
}
