package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// TestPubSubRepliesMatchDirect compares subscribe-mode replies and messages
// byte for byte with Redis's own, in RESP2 (arrays; few commands allowed)
// and RESP3 (pushes; any command allowed).
func TestPubSubRepliesMatchDirect(t *testing.T) {
	for _, proto := range []string{"2", "3"} {
		t.Run("resp"+proto, func(t *testing.T) {
			direct := redistest.Start(t)
			f := startFunnel(t, Options{}, pool.Options{})
			dc, fc := dialRaw(t, direct.Addr), dialRaw(t, f.Addr)
			dc.do("HELLO", proto)
			fc.do("HELLO", proto)
			dpub, fpub := dialRaw(t, direct.Addr), dialRaw(t, f.Addr)
			script := [][]string{
				{"UNSUBSCRIBE"}, {"PUNSUBSCRIBE"},
				{"SUBSCRIBE", "a", "b"}, {"SUBSCRIBE", "a"}, {"PSUBSCRIBE", "p*"},
				{"PING"}, {"PING", "hi"}, {"GET", "k"}, {"SSUBSCRIBE", "s1"},
				{"PUBLISH", "a", "m1"}, {"PUBLISH", "pq", "m2"}, {"SPUBLISH", "s1", "m3"},
				{"UNSUBSCRIBE", "a", "zz"}, {"PUNSUBSCRIBE"}, {"SUNSUBSCRIBE"}, {"UNSUBSCRIBE"},
				{"GET", "k"},
			}
			for _, cmd := range script {
				if strings.HasSuffix(cmd[0], "PUBLISH") {
					// Published from another connection: the subscriber
					// gets the message alone.
					if d, f := dpub.do(cmd...), fpub.do(cmd...); d != f {
						t.Fatalf("%v: funnel %q, direct %q", cmd, f, d)
					}
				} else {
					dc.send(cmd...)
					fc.send(cmd...)
				}
				// Some commands answer with one frame per channel.
				frames := 1
				if (cmd[0] == "SUBSCRIBE" || cmd[0] == "UNSUBSCRIBE") && len(cmd) > 2 {
					frames = len(cmd) - 1
				}
				if cmd[0] == "UNSUBSCRIBE" && len(cmd) == 1 || cmd[0] == "PUNSUBSCRIBE" && len(cmd) == 1 {
					frames = -1 // as many as the client had; read what arrives
				}
				want, got := readFrames(t, dc, frames), readFrames(t, fc, frames)
				if got != want {
					t.Errorf("%v: funnel %q, direct %q", cmd, short(got), short(want))
				}
			}
		})
	}
}

// readFrames reads n replies, or with n < 0 whatever arrives within 200 ms.
func readFrames(t *testing.T, c *rawConn, n int) string {
	t.Helper()
	var b strings.Builder
	if n < 0 {
		for {
			r, err := c.tryReply(200 * time.Millisecond)
			if err != nil {
				return b.String()
			}
			b.WriteString(r)
		}
	}
	for i := 0; i < n; i++ {
		b.WriteString(c.reply())
	}
	return b.String()
}

// TestPubSubFanOut has 500 subscribers on 10 channels and 10 patterns: each
// receives every message exactly once and in order, through one upstream
// subscriber connection.
func TestPubSubFanOut(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	ctx := context.Background()
	const subscribers, channels, messages = 500, 10, 50
	var ready, done sync.WaitGroup
	errs := make(chan error, subscribers)
	for i := 0; i < subscribers; i++ {
		ready.Add(1)
		done.Add(1)
		go func(i int) {
			defer done.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
			defer rdb.Close()
			ch := fmt.Sprintf("chan:%d", i%channels)
			var ps *redis.PubSub
			if i%2 == 0 {
				ps = rdb.Subscribe(ctx, ch)
			} else {
				ps = rdb.PSubscribe(ctx, ch+"*")
			}
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil {
				errs <- err
				ready.Done()
				return
			}
			ready.Done()
			msgs := ps.Channel()
			for n := 0; n < messages; n++ {
				select {
				case m := <-msgs:
					if m.Channel != ch || m.Payload != fmt.Sprint(n) {
						errs <- fmt.Errorf("subscriber %d: message %d is %s/%s", i, n, m.Channel, m.Payload)
						return
					}
				case <-time.After(10 * time.Second):
					errs <- fmt.Errorf("subscriber %d: message %d never came", i, n)
					return
				}
			}
			select {
			case m := <-msgs:
				errs <- fmt.Errorf("subscriber %d: extra message %s", i, m.Payload)
			case <-time.After(100 * time.Millisecond):
			}
		}(i)
	}
	ready.Wait()
	pub := f.client(t)
	for n := 0; n < messages; n++ {
		for c := 0; c < channels; c++ {
			if err := pub.Publish(ctx, fmt.Sprintf("chan:%d", c), fmt.Sprint(n)).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	direct := redis.NewClient(&redis.Options{Addr: f.Redis.Addr})
	defer direct.Close()
	list, _ := direct.ClientList(ctx).Result()
	subscriberConns := 0
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if !strings.Contains(line, " sub=0 psub=0 ") {
			subscriberConns++
		}
	}
	if subscriberConns != 1 {
		t.Errorf("upstream has %d subscriber connections, want 1:\n%s", subscriberConns, list)
	}
	done.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := testutil.ToFloat64(f.Metrics.PubSubMessages); got != subscribers*messages {
		t.Errorf("funnel_pubsub_messages_delivered_total = %v, want %d", got, subscribers*messages)
	}
	// Every subscriber left: the upstream has nothing subscribed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		chans, _ := direct.PubSubChannels(ctx, "*").Result()
		pats, _ := direct.PubSubNumPat(ctx).Result()
		if len(chans) == 0 && pats == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream still subscribed: %v, %d patterns", chans, pats)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPubSubResubscribesAfterReconnect restarts the upstream under a
// subscriber: the hub subscribes again and messages flow.
func TestPubSubResubscribesAfterReconnect(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	ctx := context.Background()
	sub := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
	defer sub.Close()
	ps := sub.Subscribe(ctx, "news")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	f.Redis.Restart()
	pub := f.client(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, _ := pub.Publish(ctx, "news", "back").Result()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hub did not subscribe again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil || msg.Payload != "back" {
		t.Fatalf("after reconnect: %v %v", msg, err)
	}
}

// TestSlowSubscriberIsCutOff publishes large messages to a subscriber that
// reads nothing: it is closed once its backlog passes the cap, and a
// subscriber that reads keeps getting every message.
func TestSlowSubscriberIsCutOff(t *testing.T) {
	f := startFunnel(t, Options{MaxPipeline: 16, ClientOutputLimit: 2 << 20}, pool.Options{})
	slow := dialRaw(t, f.Addr)
	slow.do("SUBSCRIBE", "big")
	ctx := context.Background()
	good := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
	defer good.Close()
	ps := good.Subscribe(ctx, "big")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := ps.Channel(redis.WithChannelSize(1000))
	pub := f.client(t)
	payload := strings.Repeat("p", 64<<10)
	for i := 0; i < 200; i++ {
		if err := pub.Publish(ctx, "big", payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 200; i++ {
		select {
		case m := <-msgs:
			if len(m.Payload) != len(payload) {
				t.Fatalf("message %d: %d bytes", i, len(m.Payload))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("reading subscriber got %d of 200 messages", i)
		}
	}
	closed := testutil.ToFloat64(f.Metrics.ClientsClosed.WithLabelValues("pubsub_output_limit")) +
		testutil.ToFloat64(f.Metrics.ClientsClosed.WithLabelValues("output_limit"))
	if closed != 1 {
		t.Fatalf("%v slow subscribers closed, want 1", closed)
	}
	expectClosed(t, slow)
}

// TestUnconfirmedSubscriptionClosesClient: when the upstream never confirms
// a SUBSCRIBE, the client gets a funnel error and then its connection is
// closed, since it cannot know what it is subscribed to; other clients are
// unaffected.
func TestUnconfirmedSubscriptionClosesClient(t *testing.T) {
	addr := fakeUpstream(t, func(c net.Conn) {
		// Answers ordinary commands, never SUBSCRIBE.
		serveScripted(c, map[string]string{"get": "$1\r\nv\r\n", "subscribe": ""})
	})
	f := startFunnelFor(t, nil, "redis://"+addr, Options{}, pool.Options{Timeout: 300 * time.Millisecond})
	sub, other := dialRaw(t, f.Addr), dialRaw(t, f.Addr)
	if got := sub.do("SUBSCRIBE", "ch"); !strings.HasPrefix(got, "-ERR funnel: upstream did not confirm the subscription in time") {
		t.Fatalf("SUBSCRIBE: %q", got)
	}
	if _, err := sub.tryReply(2 * time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("connection not closed after the failed subscription: %v", err)
	}
	if got := other.do("GET", "k"); got != "$1\r\nv\r\n" {
		t.Fatalf("other client: %q", got)
	}
	// The metric is counted once the session has cleaned up.
	for deadline := time.Now().Add(2 * time.Second); testutil.ToFloat64(f.Metrics.ClientsClosed.WithLabelValues("pubsub_unconfirmed")) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("the client was not counted as closed for pubsub_unconfirmed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
