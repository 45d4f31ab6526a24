package proxy

import (
	"bufio"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/tidwall/redcon"
)

// subKind is what a subscription is to: a channel, a pattern, or a shard
// channel.
type subKind uint8

const (
	kindChannel subKind = iota
	kindPattern
	kindShard
)

// subKey names one subscription.
type subKey struct {
	kind subKind
	name string
}

var subVerbs = [3][2]string{
	{"subscribe", "unsubscribe"},
	{"psubscribe", "punsubscribe"},
	{"ssubscribe", "sunsubscribe"},
}

// hub shares one upstream subscriber connection among every subscribed
// client. It subscribes upstream once per channel or pattern, however many
// clients listen, unsubscribes when the last one leaves, and copies each
// message to every local subscriber, in the order the upstream sent them.
// After a reconnect it subscribes to everything again.
type hub struct {
	srv *Server

	mu      sync.Mutex
	subs    map[subKey]map[*session]bool
	pending map[subKey][]*pendingSub // waiting for the upstream's confirmation
	out     chan []byte              // commands for the writer goroutine
	running bool
	nc      interface{ Close() error } // the live subscriber connection, if any
	// batch collects the subscribers given messages from one read; only
	// the reading goroutine uses it.
	batch pool.Batch
}

// pendingSub is a client waiting for the upstream to confirm a subscription
// before it is told it is subscribed, so it misses no message published
// after its SUBSCRIBE reply.
type pendingSub struct {
	s    *session
	done func(error)
}

func newHub(srv *Server) *hub {
	return &hub{srv: srv, subs: map[subKey]map[*session]bool{}, pending: map[subKey][]*pendingSub{}}
}

// subscribed reports whether the session is in subscribed mode.
func (s *session) subscribed() bool { return len(s.subs) > 0 }

// subCount is what Redis reports after (un)subscribing: channels plus
// patterns, or shard channels alone for the shard commands.
func (s *session) subCount(kind subKind) int {
	n := 0
	for k := range s.subs {
		if (kind == kindShard) == (k.kind == kindShard) {
			n++
		}
	}
	return n
}

func kindOf(name string) (subKind, bool) {
	switch name {
	case "subscribe", "unsubscribe":
		return kindChannel, name == "subscribe"
	case "psubscribe", "punsubscribe":
		return kindPattern, name == "psubscribe"
	default:
		return kindShard, name == "ssubscribe"
	}
}

// routePubSub handles the subscribe and unsubscribe commands. It queues r
// itself, before the hub can push any message, so replies and messages
// reach the client in the right order.
func (s *session) routePubSub(r *request, name string, args [][]byte) {
	kind, sub := kindOf(name)
	r.route = "pubsub"
	if sub {
		r.pubsubKind = confirmsSubscription
		s.unconfirmedSubs.Add(1)
	}
	if !s.enqueue(r) {
		return
	}
	if sub {
		s.subscribe(r, kind, args[1:])
	} else {
		s.unsubscribe(r, kind, args[1:])
	}
}

func (s *session) subscribe(r *request, kind subKind, names [][]byte) {
	if s.subs == nil {
		s.subs = map[subKey]bool{}
	}
	var reply []byte
	verb := subVerbs[kind][0]
	// Each subscription reports its confirmation here, once; the channel
	// holds them all, so the hub never waits on it.
	confirmations := make(chan error, len(names))
	for _, n := range names {
		key := subKey{kind, string(n)}
		s.subs[key] = true
		reply = s.appendSubReply(reply, verb, n, s.subCount(kind))
		s.srv.hub.add(s, key, func(err error) { confirmations <- err })
	}
	s.srv.metrics.PubSubSubscribers.Set(float64(s.srv.hub.clients()))
	// Answer once the upstream has confirmed every subscription, or with an
	// error after the upstream timeout. After such an error the client
	// cannot know what it is subscribed to, so funnel closes its connection
	// once the error is sent; clients then reconnect and subscribe again.
	s.srv.wg.Add(1)
	go func() {
		defer s.srv.wg.Done()
		timer := time.NewTimer(s.pool.Timeout())
		defer timer.Stop()
		fail := func(err error) {
			r.closeAfter, r.closeReason = true, "pubsub_unconfirmed"
			r.Complete(nil, err)
		}
		for range names {
			select {
			case err := <-confirmations:
				if err != nil {
					fail(err)
					return
				}
			case <-timer.C:
				fail(errors.New("funnel: upstream did not confirm the subscription in time"))
				return
			}
		}
		r.Complete(reply, nil)
	}()
}

func (s *session) unsubscribe(r *request, kind subKind, names [][]byte) {
	verb := subVerbs[kind][1]
	if len(names) == 0 {
		for k := range s.subs {
			if k.kind == kind {
				names = append(names, []byte(k.name))
			}
		}
	}
	var reply []byte
	if len(names) == 0 {
		reply = s.pushHeader(reply, 3)
		reply = redcon.AppendBulkString(reply, verb)
		reply = append(reply, s.nullReply()...)
		reply = redcon.AppendInt(reply, int64(s.subCount(kind)))
	}
	for _, n := range names {
		key := subKey{kind, string(n)}
		if s.subs[key] {
			delete(s.subs, key)
			s.srv.hub.remove(s, key)
		}
		reply = s.appendSubReply(reply, verb, n, s.subCount(kind))
	}
	s.srv.metrics.PubSubSubscribers.Set(float64(s.srv.hub.clients()))
	r.Complete(reply, nil)
}

// leavePubSub drops all of a departing client's subscriptions.
func (s *session) leavePubSub() {
	for k := range s.subs {
		s.srv.hub.remove(s, k)
	}
	s.subs = nil
	s.srv.metrics.PubSubSubscribers.Set(float64(s.srv.hub.clients()))
}

func (s *session) appendSubReply(b []byte, verb string, name []byte, count int) []byte {
	b = s.pushHeader(b, 3)
	b = redcon.AppendBulkString(b, verb)
	b = redcon.AppendBulk(b, name)
	return redcon.AppendInt(b, int64(count))
}

// subscribedAllowed lists what RESP2 lets a subscribed client send.
var subscribedAllowed = map[string]bool{
	"subscribe": true, "psubscribe": true, "ssubscribe": true, "unsubscribe": true,
	"punsubscribe": true, "sunsubscribe": true, "ping": true, "quit": true, "reset": true,
}

// subscribedPing is PING's reply in subscribed mode.
func subscribedPing(args [][]byte) []byte {
	b := redcon.AppendArray(nil, 2)
	b = redcon.AppendBulkString(b, "pong")
	if len(args) > 1 {
		return redcon.AppendBulk(b, args[1])
	}
	return redcon.AppendBulkString(b, "")
}

func notAllowedSubscribed(name string) []byte {
	return errReply("ERR Can't execute '" + name + "': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
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
		h.sendLocked(subVerbs[key.kind][0], key.name)
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
		h.sendLocked(subVerbs[key.kind][1], key.name)
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

// sendLocked queues a command for the upstream subscriber connection,
// starting the connection if it is not running. mu must be held.
func (h *hub) sendLocked(verb, name string) {
	if !h.running {
		h.running = true
		h.out = make(chan []byte, 4096)
		h.srv.wg.Add(1)
		go h.run(h.out)
	}
	cmd := resp.AppendCommand(nil, []byte(verb), []byte(name))
	select {
	case h.out <- cmd:
	default:
		// The upstream is not taking commands fast enough; fail the
		// connection so it is rebuilt from h.subs, which already holds
		// this change.
		h.srv.log.Warn("pubsub: command queue full; reconnecting")
		if h.nc != nil {
			h.nc.Close()
		}
	}
}

// run owns the upstream subscriber connection: it dials, subscribes to
// everything wanted, then writes commands and reads messages until the
// connection fails, and starts over with backoff. It ends when funnel
// shuts down.
func (h *hub) run(out chan []byte) {
	defer h.srv.wg.Done()
	backoff := 50 * time.Millisecond
	for {
		if h.srv.isClosing() {
			h.failAll(errors.New("funnel: proxy shutting down"))
			return
		}
		err := h.serveOnce(out)
		if h.srv.isClosing() {
			h.failAll(errors.New("funnel: proxy shutting down"))
			return
		}
		h.srv.log.Warn("pubsub upstream connection ended", "err", err)
		h.failPending(err)
		select {
		case <-time.After(backoff):
		case <-h.srv.closingCh:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// serveOnce runs one upstream subscriber connection.
func (h *hub) serveOnce(out chan []byte) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc, err := h.srv.pool.Dial(ctx)
	if err != nil {
		return err
	}
	h.srv.metrics.UpstreamConns.WithLabelValues("pubsub").Inc()
	defer h.srv.metrics.UpstreamConns.WithLabelValues("pubsub").Dec()
	stop := make(chan struct{})
	var once sync.Once
	closeConn := func() { once.Do(func() { close(stop); nc.Close() }) }
	defer closeConn()
	go func() {
		select {
		case <-h.srv.closingCh:
			closeConn()
		case <-stop:
		}
	}()
	// Subscribe to everything wanted, then drain queued commands: a stale
	// one repeats a state already asked for, which Redis accepts.
	h.mu.Lock()
	h.nc = nc
	var batch []byte
	for k := range h.subs {
		batch = resp.AppendCommand(batch, []byte(subVerbs[k.kind][0]), []byte(k.name))
	}
	h.mu.Unlock()
	writeErr := make(chan error, 1)
	go func() {
		bw := bufio.NewWriter(nc)
		_, err := bw.Write(batch)
		for err == nil {
			if err = bw.Flush(); err != nil {
				break
			}
			select {
			case cmd := <-out:
				_, err = bw.Write(cmd)
			case <-stop:
				err = errors.New("closed")
			}
		}
		writeErr <- err
		closeConn()
	}()
	rerr := h.readLoop(nc)
	closeConn()
	h.mu.Lock()
	h.nc = nil
	h.mu.Unlock()
	<-writeErr
	return rerr
}

// readLoop reads confirmations and messages from the subscriber connection.
func (h *hub) readLoop(nc interface{ Read([]byte) (int, error) }) error {
	defer h.batch.Flush()
	buf := make([]byte, 16<<10)
	start, end := 0, 0
	var scan resp.ReplyScanner
	for {
		n, err := scan.Scan(buf[start:end])
		if err != nil {
			return err
		}
		if n > 0 {
			h.dispatch(buf[start : start+n])
			start += n
			continue
		}
		// Every message read so far is queued: send them on, a write per
		// subscriber rather than per message.
		h.batch.Flush()
		if start > 0 {
			end = copy(buf, buf[start:end])
			start = 0
		}
		if end == len(buf) {
			buf = append(buf, make([]byte, len(buf))...)
		}
		m, err := nc.Read(buf[end:])
		end += m
		if err != nil {
			return err
		}
	}
}

// dispatch handles one reply from the subscriber connection.
func (h *hub) dispatch(raw []byte) {
	parts := splitArray(raw)
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
		h.deliverLocked(subKey{kind, string(parts[1])}, raw)
	case "pmessage":
		h.deliverLocked(subKey{kindPattern, string(parts[1])}, raw)
	}
}

// deliverLocked copies a message to every subscriber of key.
func (h *hub) deliverLocked(key subKey, raw []byte) {
	for s := range h.subs[key] {
		s.push(raw, &h.batch)
		h.srv.metrics.PubSubMessages.Inc()
	}
}

// failPending fails subscriptions still waiting for a confirmation.
func (h *hub) failPending(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
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

// pubsubKind tells the requests that order pub/sub output.
type pubsubKind uint8

const (
	notPubSub            pubsubKind = iota
	confirmsSubscription            // a SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE
	queuedPush                      // a message waiting in line
)

// push hands a message to the client without waiting, its write left to
// batch. A RESP3 client gets it at once if it can (see pushDirect); else it
// waits in line like a reply, and a subscriber whose line is full is too
// slow and is cut off, as Redis cuts off a pub/sub client over its output
// buffer limit.
func (s *session) push(raw []byte, batch *pool.Batch) {
	if s.resp3() && s.pushDirect(raw, batch) {
		return
	}
	r := newRequest(s, nil)
	r.route = "pubsub"
	r.pubsubKind = queuedPush
	r.finish(raw, nil)
	if s.resp3() {
		r.reply[0] = '>' // the hub's RESP2 array becomes a RESP3 push
	}
	s.queuedPushes.Add(1)
	select {
	case s.queue <- r:
		s.sendReplies(batch)
	default:
		s.kill("pubsub_output_limit")
	}
}

// pushDirect puts a message for a RESP3 client straight into its output,
// ahead of replies still awaited: RESP3 pushes may come between any two
// replies, so a client blocked in BLPOP still gets its messages. It does not
// when that could put the message before its subscription's confirmation or
// an earlier message still in line, or while the client is not reading.
func (s *session) pushDirect(raw []byte, batch *pool.Batch) bool {
	o := &s.out
	if !o.mu.TryLock() {
		return false
	}
	defer o.mu.Unlock()
	if o.stalled || o.closeReason != "" || s.isDead() || s.unconfirmedSubs.Load() > 0 || s.queuedPushes.Load() > 0 {
		return false
	}
	// The buffer holds whole replies only, so the push lands between two.
	o.buf = append(o.buf, '>')
	o.buf = append(o.buf, raw[1:]...)
	batch.Add(s)
	return true
}

// splitArray returns the elements of a flat RESP array of bulk strings or
// integers, as raw text.
func splitArray(raw []byte) [][]byte {
	if len(raw) == 0 || raw[0] != '*' {
		return nil
	}
	i := strings.Index(string(raw), "\r\n")
	n, err := strconv.Atoi(string(raw[1:i]))
	if err != nil {
		return nil
	}
	raw = raw[i+2:]
	out := make([][]byte, 0, n)
	for ; n > 0 && len(raw) > 0; n-- {
		j := strings.Index(string(raw), "\r\n")
		if j < 0 {
			return nil
		}
		switch raw[0] {
		case '$':
			l, err := strconv.Atoi(string(raw[1:j]))
			if err != nil || l < 0 || j+2+l > len(raw) {
				return nil
			}
			out = append(out, raw[j+2:j+2+l])
			raw = raw[min(j+4+l, len(raw)):]
		default:
			out = append(out, raw[1:j])
			raw = raw[j+2:]
		}
	}
	return out
}
