package proxy

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// TestRESP3LocalReplies checks the replies funnel makes itself in RESP3, and
// that SELECT keeps the protocol while RESET and HELLO 2 go back to RESP2.
func TestRESP3LocalReplies(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	c := dialRaw(t, f.Addr)
	steps := []struct {
		cmd  []string
		want string // exact reply, or a prefix when it ends in "..."
	}{
		{[]string{"HELLO", "4"}, "-NOPROTO unsupported protocol version\r\n"},
		{[]string{"HELLO", "3", "SETNAME", "r3"}, "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n..."},
		{[]string{"CLIENT", "GETNAME"}, "$2\r\nr3\r\n"},
		{[]string{"CLIENT", "SETNAME", ""}, "+OK\r\n"},
		{[]string{"CLIENT", "GETNAME"}, "_\r\n"},
		{[]string{"CLIENT", "INFO"}, "=..."},
		{[]string{"INFO", "funnel"}, "=..."},
		{[]string{"SET", "k", "v"}, "+OK\r\n"},
		{[]string{"HSET", "h", "f", "1"}, ":1\r\n"},
		{[]string{"HGETALL", "h"}, "%1\r\n$1\r\nf\r\n$1\r\n1\r\n"},
		{[]string{"SELECT", "1"}, "+OK\r\n"},
		{[]string{"GET", "k"}, "_\r\n"},
		{[]string{"HGETALL", "h"}, "%0\r\n"},
		{[]string{"SELECT", "0"}, "+OK\r\n"},
		{[]string{"GET", "k"}, "$1\r\nv\r\n"},
		{[]string{"MULTI"}, "+OK\r\n"},
		{[]string{"HELLO", "2"}, "-ERR funnel: HELLO inside MULTI is not supported through the proxy\r\n"},
		{[]string{"DISCARD"}, "+OK\r\n"},
		{[]string{"WATCH", "k"}, "+OK\r\n"},
		{[]string{"HELLO", "2"}, "-ERR funnel: HELLO 2 inside a WATCH span is not supported through the proxy\r\n"},
		{[]string{"HELLO", "3"}, "%7\r\n..."}, // same protocol: nothing to switch
		{[]string{"RESET"}, "+RESET\r\n"},
		{[]string{"GET", "nope"}, "$-1\r\n"},
		{[]string{"HELLO"}, "*14\r\n..."},
		{[]string{"HELLO", "3"}, "%7\r\n..."},
		{[]string{"HELLO", "2"}, "*14\r\n..."},
		{[]string{"HGETALL", "h"}, "*2\r\n$1\r\nf\r\n$1\r\n1\r\n"},
	}
	for _, st := range steps {
		got := c.do(st.cmd...)
		want, prefix := strings.CutSuffix(st.want, "...")
		if (prefix && !strings.HasPrefix(got, want)) || (!prefix && got != want) {
			t.Fatalf("%v: got %q, want %q", st.cmd, short(got), st.want)
		}
	}
	c.do("HELLO", "3")
	if info := c.do("CLIENT", "INFO"); !strings.Contains(info, " resp=3 ") || !strings.HasPrefix(info, "=") {
		t.Fatalf("CLIENT INFO of a RESP3 client: %q", info)
	}
	if list := c.do("CLIENT", "LIST"); !strings.HasPrefix(list, "=") || !strings.Contains(list, "txt:id=") {
		t.Fatalf("CLIENT LIST in RESP3: %q", list)
	}
	// One connection each in the pools used: db 0 in RESP2 and RESP3, db 1
	// in RESP3.
	if info := c.do("INFO", "funnel"); !strings.Contains(info, "funnel_upstream_connections:3\r\n") {
		t.Fatalf("INFO funnel does not count every pool's connections: %q", info)
	}
}

// TestRESP3CacheKeptApart reads the same cached keys in RESP2 and RESP3:
// each protocol gets its own reply shape, and a write in either protocol
// invalidates both.
func TestRESP3CacheKeptApart(t *testing.T) {
	f := startFunnel(t, Options{CacheRules: []CacheRule{{Pattern: "c:*", TTL: time.Minute}}}, pool.Options{})
	r2, r3 := dialRaw(t, f.Addr), dialRaw(t, f.Addr)
	r3.do("HELLO", "3")
	r2.do("HSET", "c:h", "f", "1")
	for i := 0; i < 2; i++ { // the second round is served from the cache
		if got := r2.do("HGETALL", "c:h"); got != "*2\r\n$1\r\nf\r\n$1\r\n1\r\n" {
			t.Fatalf("RESP2 HGETALL: %q", got)
		}
		if got := r3.do("HGETALL", "c:h"); got != "%1\r\n$1\r\nf\r\n$1\r\n1\r\n" {
			t.Fatalf("RESP3 HGETALL: %q", got)
		}
	}
	if st := f.Server.cache.Stats(); st.Hits != 2 {
		t.Fatalf("cache hits %d, want 2", st.Hits)
	}
	r3.do("HSET", "c:h", "f", "2")
	if got := r2.do("HGETALL", "c:h"); got != "*2\r\n$1\r\nf\r\n$1\r\n2\r\n" {
		t.Fatalf("RESP2 read after a RESP3 write: %q", got)
	}
	r2.do("HSET", "c:h", "f", "3")
	if got := r3.do("HGETALL", "c:h"); got != "%1\r\n$1\r\nf\r\n$1\r\n3\r\n" {
		t.Fatalf("RESP3 read after a RESP2 write: %q", got)
	}
}

// TestHELLO3WithoutRESP3Upstream: an upstream without HELLO (Redis 5), or
// one of a RESP3-capable version that turns HELLO 3 down (RESP3 switched
// off, as managed services allow), makes funnel answer HELLO 3 with NOPROTO,
// so clients fall back to RESP2 as they would with that Redis, and RESP2
// keeps working.
func TestHELLO3WithoutRESP3Upstream(t *testing.T) {
	for _, tc := range []struct{ name, hello, info string }{
		{"redis 5", "-ERR unknown command 'HELLO', with args beginning with: '3' \r\n", "$32\r\n# Server\r\nredis_version:5.0.14\r\n\r\n"},
		{"resp3 off", "-NOPROTO unsupported protocol version\r\n", "$31\r\n# Server\r\nredis_version:7.2.4\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeUpstream(t, func(c net.Conn) {
				serveScripted(c, map[string]string{"hello": tc.hello, "info": tc.info, "get": "$1\r\nv\r\n"})
			})
			f := startFunnelFor(t, nil, "redis://"+addr, Options{}, pool.Options{Timeout: 2 * time.Second})
			c := dialRaw(t, f.Addr)
			for i := 0; i < 2; i++ { // the second time from what funnel learned
				if got := c.do("HELLO", "3"); got != "-NOPROTO unsupported protocol version\r\n" {
					t.Fatalf("HELLO 3 (%d): %q", i+1, got)
				}
			}
			if got := c.do("GET", "k"); got != "$1\r\nv\r\n" {
				t.Fatalf("GET after NOPROTO: %q", got)
			}
		})
	}
}

// serveScripted answers each command on c with replies[its lower-case name],
// or an unknown-command error, until c closes.
func serveScripted(c net.Conn, replies map[string]string) {
	rd := resp.NewRequestReader(c, resp.DefaultLimits)
	for {
		cmd, err := rd.Read()
		if err != nil {
			return
		}
		reply, ok := replies[strings.ToLower(string(cmd.Args[0]))]
		if !ok {
			reply = "-ERR unknown command\r\n"
		}
		if _, err := c.Write([]byte(reply)); err != nil {
			return
		}
	}
}

// TestRESP3PushWhileBlocked: a RESP3 client blocked in BLPOP on the
// connection that subscribed still gets its messages at once, as from
// Redis; then the BLPOP reply. A RESP2 subscriber cannot send BLPOP at all.
func TestRESP3PushWhileBlocked(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	c, pub := dialRaw(t, f.Addr), dialRaw(t, f.Addr)
	c.do("HELLO", "3")
	if got := c.do("SUBSCRIBE", "ch"); got != ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n" {
		t.Fatalf("SUBSCRIBE: %q", got)
	}
	c.send("BLPOP", "nothing", "2")
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	for i := 0; i < 3; i++ {
		pub.do("PUBLISH", "ch", "m"+strconv.Itoa(i))
	}
	for i := 0; i < 3; i++ {
		want := ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nm" + strconv.Itoa(i) + "\r\n"
		if got, err := c.tryReply(time.Second); err != nil || got != want {
			t.Fatalf("message %d while blocked: %q %v", i, got, err)
		}
	}
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("messages came after %v, behind the BLPOP", waited)
	}
	if got := c.reply(); got != "_\r\n" {
		t.Fatalf("BLPOP timeout in RESP3: %q", got)
	}
}

// TestRESP3PushOrder: while messages pour in, a RESP3 subscriber sees its
// SUBSCRIBE confirmed before any message of the channel, and then every
// message in publish order, with none skipped, whichever way each reached
// it (straight into its output or in line).
func TestRESP3PushOrder(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	pub := f.client(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pub.Publish(context.Background(), "ch", strconv.Itoa(i))
		}
	}()
	defer func() { close(stop); <-done }()
	for round := 0; round < 5; round++ {
		c := dialRaw(t, f.Addr)
		c.do("HELLO", "3")
		c.send("SUBSCRIBE", "ch")
		if got := c.reply(); got != ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n" {
			t.Fatalf("round %d: first frame is not the confirmation: %q", round, got)
		}
		last := -1
		for i := 0; i < 200; i++ {
			if i == 100 {
				c.send("PING") // a reply in between changes nothing
			}
			got := c.reply()
			if got == "+PONG\r\n" {
				got = c.reply()
			}
			parts := strings.Split(got, "\r\n")
			if len(parts) < 7 || parts[0] != ">3" || parts[2] != "message" {
				t.Fatalf("round %d: not a message: %q", round, got)
			}
			n, _ := strconv.Atoi(parts[6])
			if last >= 0 && n != last+1 {
				t.Fatalf("round %d: message %d after %d", round, n, last)
			}
			last = n
		}
		c.conn.Close()
	}
}
