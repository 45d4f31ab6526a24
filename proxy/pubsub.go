package proxy

import (
	"errors"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// The session's side of pub/sub: subscribing through the hub (hub.go) and
// receiving its messages in order with the client's replies.

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

// routePubSub handles the subscribe and unsubscribe commands. r was queued
// on the output when it was read, before the hub can push any message for
// it, so replies and messages reach the client in the right order.
func (s *session) routePubSub(r *request) {
	kind, sub := kindOf(r.info.Name)
	if sub {
		r.pubsubKind = confirmsSubscription
		s.unconfirmedSubs.Add(1)
		s.subscribe(r, kind, r.args[1:])
	} else {
		s.unsubscribe(r, kind, r.args[1:])
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
	timeout := s.pool.Timeout()
	s.srv.wg.Add(1)
	go func() {
		defer s.srv.wg.Done()
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		fail := func(err error) {
			r.closeAfter = closedPubSubUnconfirmed
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
		r.completeLocal(reply)
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
		reply = resp.AppendBulkString(reply, verb)
		reply = append(reply, s.nullReply()...)
		reply = resp.AppendInt(reply, int64(s.subCount(kind)))
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
	r.completeLocal(reply)
}

// leavePubSub drops all of the client's subscriptions.
func (s *session) leavePubSub() {
	if len(s.subs) == 0 {
		return
	}
	for k := range s.subs {
		s.srv.hub.remove(s, k)
	}
	s.subs = nil
	s.srv.metrics.PubSubSubscribers.Set(float64(s.srv.hub.clients()))
}

func (s *session) appendSubReply(b []byte, verb string, name []byte, count int) []byte {
	b = s.pushHeader(b, 3)
	b = resp.AppendBulkString(b, verb)
	b = resp.AppendBulk(b, name)
	return resp.AppendInt(b, int64(count))
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
	resp3 := s.resp3()
	if resp3 && s.out.pushDirect(raw, batch) {
		return
	}
	if int(s.out.queued.Load()) >= s.srv.opts.MaxPipeline {
		s.kill(closedPubSubOutputLimit)
		return
	}
	r := newReply(s, routePubSub)
	r.pubsubKind = queuedPush
	r.reply = append(r.reply[:0], raw...)
	if resp3 {
		r.reply = resp.AsPush(r.reply) // the hub's RESP2 array becomes a RESP3 push
	}
	r.mem = int64(len(r.reply))
	s.srv.mem.add(r.mem)
	s.held(r.mem)
	s.queuedPushes.Add(1)
	r.state.Store(done)
	if s.out.push(r) {
		s.out.ready(batch)
	}
}
