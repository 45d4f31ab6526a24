package proxy

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/glob"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// hub shares one upstream subscriber connection among every subscribed
// client. It subscribes upstream once per channel or pattern, however many
// clients listen, unsubscribes when the last one leaves, and copies each
// message to every local subscriber, in the order the upstream sent them.
// The connection is a push connection of the pool's connection engine
// (dial, login, writer and reader are the pool's); when it breaks, the hub
// subscribes to everything again after a backoff.
type hub struct {
	srv *Server

	mu      sync.Mutex
	subs    map[subKey]map[*session]bool // confirmed subscriptions and their subscribers
	pending map[subKey][]*pendingSub     // waiting for the upstream's confirmation
	conn    *pool.Conn                   // made on first use
	retry   chan struct{}                // wakes the resubscriber after a failure
	running bool                         // the resubscriber runs
}

// pendingSub is a client waiting for the upstream to confirm a subscription
// before it is told it is subscribed, so it misses no message published
// after its SUBSCRIBE reply.
type pendingSub struct {
	s    *session
	done func(error)
}

func newHub(srv *Server) *hub {
	return &hub{srv: srv, subs: map[subKey]map[*session]bool{}, pending: map[subKey][]*pendingSub{}, retry: make(chan struct{}, 1)}
}

// add registers s for key and calls done once the upstream has confirmed
// the subscription (at once if it already had). done must not block.
func (h *hub) add(s *session, key subKey, done func(error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if set := h.subs[key]; len(set) > 0 && len(h.pending[key]) == 0 {
		set[s] = true
		done(nil)
		return
	}
	first := len(h.subs[key]) == 0 && len(h.pending[key]) == 0
	h.pending[key] = append(h.pending[key], &pendingSub{s: s, done: done})
	if first {
		h.sendLocked(subVerbs[key.kind][0], []string{key.name})
	}
	h.report()
}

// remove drops s's subscription to key, and the upstream's when s was the
// last subscriber.
func (h *hub) remove(s *session, key subKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.subs[key]
	delete(set, s)
	ps := h.pending[key]
	for i, p := range ps {
		if p.s == s {
			h.pending[key] = append(ps[:i], ps[i+1:]...)
			p.done(errSessionClosed)
			break
		}
	}
	if len(set) == 0 && len(h.pending[key]) == 0 {
		delete(h.subs, key)
		delete(h.pending, key)
		h.sendLocked(subVerbs[key.kind][1], []string{key.name})
	}
	h.report()
}

func (h *hub) clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[*session]bool{}
	for _, set := range h.subs {
		for s := range set {
			seen[s] = true
		}
	}
	return len(seen)
}

func (h *hub) report() {
	var n [3]int
	for k := range h.subs {
		n[k.kind]++
	}
	for kind, label := range []string{"channel", "pattern", "shard"} {
		h.srv.metrics.PubSubChannels.WithLabelValues(label).Set(float64(n[kind]))
	}
}

// hubCommand is a command the hub sent; a failure to send it means the
// connection is down.
type hubCommand struct{ h *hub }

func (c hubCommand) Complete(_ []byte, err error) {
	if err != nil {
		c.h.failed(err)
	}
}

// sendLocked writes verb with names on the subscriber connection, making
// the connection first. It never waits: if the connection's queue is full,
// the connection is broken instead and rebuilt from h.subs and h.pending,
// which already hold this change. mu must be held.
func (h *hub) sendLocked(verb string, names []string) {
	if h.conn == nil {
		h.conn = h.srv.pool.NewPushConn(h)
	}
	args := [][]byte{[]byte(verb)}
	for _, n := range names {
		args = append(args, []byte(n))
	}
	h.srv.metrics.Command(verb).Upstream(1)
	if !h.srv.pool.TrySubmit(h.conn, &pool.Request{Raw: resp.AppendCommand(nil, args...), Done: hubCommand{h}}) {
		h.srv.log.Warn("pubsub: the subscriber connection is not taking commands fast enough; reconnecting it")
		h.conn.Break()
	}
}

// Push implements pool.PushHandler: one confirmation or message. The
// subscribers' writes are left to batch, which the connection flushes once
// per read, so a burst of messages reaches each client in one write.
func (h *hub) Push(raw []byte, batch *pool.Batch) { h.dispatch(raw, batch) }

// Down implements pool.PushHandler: the subscriber connection broke.
func (h *hub) Down(err error) { h.failed(err) }

// failed fails the subscriptions waiting for a confirmation, and has the
// resubscriber restore the rest.
func (h *hub) failed(err error) {
	if h.srv.isClosing() {
		h.failAll(errors.New("funnel: proxy shutting down"))
		return
	}
	h.srv.log.Warn("pubsub upstream connection failed; funnel subscribes again after a backoff, and clients waiting for a confirmation get an error", "err", err)
	h.mu.Lock()
	ferr := errors.New("funnel: pub/sub upstream unavailable (" + err.Error() + ")")
	for key, ps := range h.pending {
		for _, p := range ps {
			p.done(ferr)
		}
		delete(h.pending, key)
		if len(h.subs[key]) == 0 {
			delete(h.subs, key)
		}
	}
	wanted := len(h.subs) > 0
	if wanted && !h.running {
		h.running = true
		h.srv.wg.Add(1)
		go h.resubscribe()
	}
	h.mu.Unlock()
	if wanted {
		select {
		case h.retry <- struct{}{}:
		default:
		}
	}
}

// resubscribe subscribes to everything wanted again after each failure,
// with a capped backoff. It ends when funnel shuts down.
func (h *hub) resubscribe() {
	defer h.srv.wg.Done()
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-h.retry:
		case <-h.srv.closingCh:
			return
		}
		select {
		case <-time.After(backoff):
		case <-h.srv.closingCh:
			return
		}
		backoff = min(2*backoff, time.Second)
		h.mu.Lock()
		var names [3][]string
		for k := range h.subs {
			names[k.kind] = append(names[k.kind], k.name)
		}
		for kind, ns := range names {
			if len(ns) > 0 {
				h.sendLocked(subVerbs[kind][0], ns)
			}
		}
		h.mu.Unlock()
	}
}

// dispatch handles one reply from the subscriber connection. A panic here
// would be a bug; it must not take funnel down.
func (h *hub) dispatch(raw []byte, batch *pool.Batch) {
	defer h.srv.recoverPanic(nil)
	parts := resp.FlatArray(raw)
	if len(parts) < 3 {
		return
	}
	verb := strings.ToLower(string(parts[0]))
	h.mu.Lock()
	defer h.mu.Unlock()
	switch verb {
	case "subscribe", "psubscribe", "ssubscribe":
		kind, _ := kindOf(verb)
		key := subKey{kind, string(parts[1])}
		set := h.subs[key]
		if set == nil {
			set = map[*session]bool{}
			h.subs[key] = set
		}
		for _, p := range h.pending[key] {
			set[p.s] = true
			p.done(nil)
		}
		delete(h.pending, key)
	case "message", "smessage":
		kind := kindChannel
		if verb == "smessage" {
			kind = kindShard
		}
		h.deliverLocked(subKey{kind, string(parts[1])}, raw, batch)
	case "pmessage":
		h.deliverLocked(subKey{kindPattern, string(parts[1])}, raw, batch)
	}
}

// deliverLocked copies a message to every subscriber of key.
func (h *hub) deliverLocked(key subKey, raw []byte, batch *pool.Batch) {
	for s := range h.subs[key] {
		s.push(raw, batch)
		h.srv.metrics.PubSubMessages.Inc()
	}
}

func (h *hub) failAll(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, ps := range h.pending {
		for _, p := range ps {
			p.done(err)
		}
		delete(h.pending, key)
	}
}

// receivers turns the upstream's answer to PUBLISH (or SPUBLISH) into what
// Redis would answer if funnel's clients were its own: the hub counts once
// for its subscription to the channel and once for each pattern of its
// that matches, where each local subscriber should count. Other funnels'
// hubs still count once each.
func (h *hub) receivers(channel []byte, upstream int64, shard bool) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	kind := kindChannel
	if shard {
		kind = kindShard
	}
	n := upstream
	if set, ok := h.subs[subKey{kind, string(channel)}]; ok {
		n += int64(len(set)) - 1
	}
	if shard {
		return max(n, 0)
	}
	for k, set := range h.subs {
		if k.kind == kindPattern && glob.Match(k.name, string(channel)) {
			n += int64(len(set)) - 1
		}
	}
	return max(n, 0)
}
