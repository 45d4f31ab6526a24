package proxy

// Regression tests for issue 8, defect 12: where funnel answers otherwise
// than Redis, as Redis's own test suite found. Each compares with the
// redis-server behind funnel, asked directly.

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// runScript pipelines cmds on a new connection to addr, then ECHO END, and
// returns every byte that came back before END's reply.
func runScript(t *testing.T, addr string, cmds [][]string) string {
	t.Helper()
	c := dialRaw(t, addr)
	var b []byte
	for _, cmd := range cmds {
		var args [][]byte
		for _, a := range cmd {
			args = append(args, []byte(a))
		}
		b = resp.AppendCommand(b, args...)
	}
	c.write(append(b, endSentinel...))
	out, _ := readUntil(c, endReply, 5*time.Second)
	if !strings.HasSuffix(out, endReply) {
		t.Fatalf("%v on %s: no reply to the closing ECHO END; got %q", cmds, addr, short(out))
	}
	return strings.TrimSuffix(out, endReply)
}

// TestNoMultiCommandsMatchRedis (defect 12): commands flagged no-multi are
// refused inside MULTI with Redis's own error, and EXEC then aborts. Today
// funnel queues SAVE (+QUEUED), and answers SHUTDOWN, SYNC and PSYNC with
// its own "not supported" text.
func TestNoMultiCommandsMatchRedis(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	for _, cmd := range [][]string{
		{"SAVE"}, {"SHUTDOWN"}, {"SHUTDOWN", "NOSAVE"}, {"SYNC"}, {"PSYNC", "?", "-1"},
		{"WATCH", "x"}, {"MULTI"},
	} {
		script := [][]string{{"MULTI"}, cmd, {"EXEC"}}
		want := runScript(t, f.Redis.Addr, script)
		if got := runScript(t, f.Addr, script); got != want {
			t.Errorf("MULTI; %s; EXEC: funnel %q, direct %q", strings.Join(cmd, " "), got, want)
		}
	}
}

// TestClientKillArity (defect 12): CLIENT KILL with no arguments gets
// Redis's arity error. Today it gets funnel's "not supported" text.
func TestClientKillArity(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	want := runScript(t, f.Redis.Addr, [][]string{{"CLIENT", "KILL"}})
	if got := runScript(t, f.Addr, [][]string{{"CLIENT", "KILL"}}); got != want {
		t.Errorf("CLIENT KILL: funnel %q, direct %q", got, want)
	}
}

// TestClientReplyMatchesRedis (defect 12): CLIENT REPLY OFF, ON and SKIP
// suppress the replies Redis suppresses, byte for byte. Today funnel
// refuses CLIENT REPLY.
func TestClientReplyMatchesRedis(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	for i, script := range [][][]string{
		{
			{"CLIENT", "REPLY", "OFF"}, {"SET", "a", "1"}, {"GET", "a"}, {"NOSUCH"}, {"PING"},
			{"CLIENT", "REPLY", "ON"}, {"GET", "a"},
			{"CLIENT", "REPLY", "SKIP"}, {"GET", "a"}, {"GET", "a"},
			{"CLIENT", "REPLY", "SKIP"}, {"CLIENT", "REPLY", "OFF"}, {"PING"},
			{"CLIENT", "REPLY", "SKIP"}, {"CLIENT", "REPLY", "ON"}, {"PING"},
			{"CLIENT", "REPLY", "BAD"}, {"CLIENT", "REPLY"},
		},
		{{"CLIENT", "REPLY", "SKIP"}, {"MULTI"}, {"SET", "a", "2"}, {"EXEC"}, {"GET", "a"}},
		{{"CLIENT", "REPLY", "OFF"}, {"MULTI"}, {"SET", "a", "3"}, {"EXEC"}, {"CLIENT", "REPLY", "ON"}, {"GET", "a"}},
		{{"CLIENT", "REPLY", "SKIP"}, {"BLPOP", "nolist", "0.05"}, {"PING"}},
		{{"CLIENT", "REPLY", "OFF"}, {"BLPOP", "nolist", "0.05"}, {"INFO", "server"}, {"CLIENT", "REPLY", "ON"}, {"PING"}},
	} {
		want := runScript(t, f.Redis.Addr, script)
		if got := runScript(t, f.Addr, script); got != want {
			t.Errorf("script %d %v:\nfunnel %q\ndirect %q", i, script, short(got), short(want))
		}
	}
}

// TestClientUnblockMatchesRedis (defect 12): CLIENT UNBLOCK of a funnel
// client blocked in BLPOP ends its wait as Redis would: :1, and the blocked
// client gets the timeout reply, or -UNBLOCKED with ERROR. Today funnel
// refuses CLIENT UNBLOCK.
func TestClientUnblockMatchesRedis(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	// run blocks a client of addr in BLPOP, unblocks it from another, and
	// returns the two replies.
	run := func(addr string, how ...string) (unblock, reply string) {
		t.Helper()
		b, other := dialRaw(t, addr), dialRaw(t, addr)
		id := strings.TrimSuffix(strings.TrimPrefix(b.do("CLIENT", "ID"), ":"), "\r\n")
		b.send("BLPOP", "q", "10")
		waitBlocked(t, f, 1)
		unblock = other.do(append([]string{"CLIENT", "UNBLOCK", id}, how...)...)
		if unblock == ":1\r\n" {
			var err error
			if reply, err = b.tryReply(5 * time.Second); err != nil {
				t.Errorf("%s: blocked client after CLIENT UNBLOCK %v: %v", addr, how, err)
			}
		}
		b.conn.Close()
		waitBlocked(t, f, 0)
		return unblock, reply
	}
	for _, how := range [][]string{nil, {"TIMEOUT"}, {"ERROR"}} {
		wantU, wantR := run(f.Redis.Addr, how...)
		gotU, gotR := run(f.Addr, how...)
		if gotU != wantU || gotR != wantR {
			t.Errorf("CLIENT UNBLOCK id %v: funnel %q then %q, direct %q then %q", how, gotU, gotR, wantU, wantR)
		}
	}
	// Not blocked, unknown, malformed: answered as Redis does.
	for _, cmd := range [][]string{
		{"CLIENT", "UNBLOCK", "999999"}, {"CLIENT", "UNBLOCK", "x"}, {"CLIENT", "UNBLOCK"},
		{"CLIENT", "UNBLOCK", "1", "BAD"},
	} {
		want := runScript(t, f.Redis.Addr, [][]string{cmd})
		if got := runScript(t, f.Addr, [][]string{cmd}); got != want {
			t.Errorf("%v: funnel %q, direct %q", cmd, got, want)
		}
	}
	c := dialRaw(t, f.Addr)
	id := strings.TrimSuffix(strings.TrimPrefix(c.do("CLIENT", "ID"), ":"), "\r\n")
	if got := dialRaw(t, f.Addr).do("CLIENT", "UNBLOCK", id); got != ":0\r\n" {
		t.Errorf("CLIENT UNBLOCK of a funnel client that is not blocked: %q, want :0", got)
	}
}

// TestPublishCountsLocalSubscribers (defect 12): PUBLISH returns what Redis
// would: every subscription that receives the message, funnel's local ones
// included. Today it returns the upstream's count, where funnel's hub
// counts once per channel or pattern, however many clients listen.
func TestPublishCountsLocalSubscribers(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	subscribe := func(addr string) []*rawConn {
		var conns []*rawConn
		for _, sub := range [][]string{{"SUBSCRIBE", "ch"}, {"SUBSCRIBE", "ch"}, {"SUBSCRIBE", "ch", "other"}, {"PSUBSCRIBE", "c*"}, {"PSUBSCRIBE", "x*"}} {
			c := dialRaw(t, addr)
			c.send(sub...)
			for range sub[1:] {
				if got := c.reply(); !strings.Contains(got, "subscribe") {
					t.Fatalf("%v: %q", sub, got)
				}
			}
			conns = append(conns, c)
		}
		return conns
	}
	direct := subscribe(f.Redis.Addr)
	want := dialRaw(t, f.Redis.Addr).do("PUBLISH", "ch", "m")
	for _, c := range direct {
		c.conn.Close()
	}
	waitUntil(t, 5*time.Second, "the direct subscribers to leave", func() bool {
		d := dialRaw(t, f.Redis.Addr)
		return d.do("PUBSUB", "NUMPAT") == ":0\r\n" && d.do("PUBSUB", "NUMSUB", "ch") == "*2\r\n$2\r\nch\r\n:0\r\n"
	})
	// One subscriber of the upstream itself, beside funnel's.
	outside := dialRaw(t, f.Redis.Addr)
	outside.send("SUBSCRIBE", "ch")
	outside.reply()
	subscribe(f.Addr)
	wantN, _ := strconv.Atoi(strings.Trim(want, ":\r\n"))
	want = fmt.Sprintf(":%d\r\n", wantN+1)
	if got := dialRaw(t, f.Addr).do("PUBLISH", "ch", "m"); got != want {
		t.Errorf("PUBLISH ch through funnel to 3 local channel subscribers, 1 local pattern subscriber and 1 direct: %q, want %q as Redis counts", got, want)
	}
}

// TestInfoIsFresh (defect 12): INFO's counters are current, and its client
// fields describe funnel's own clients, as CLIENT LIST does. Today INFO is
// the upstream's reply, reused for 5 s: blocked_clients stays 0 while a
// client blocks, total_error_replies does not see CONFIG RESETSTAT, and
// connected_clients counts funnel's upstream connections.
func TestInfoIsFresh(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 2})
	c := dialRaw(t, f.Addr)
	c.do("PING")
	if got := infoField(t, c, "clients", "blocked_clients"); got != "0" {
		t.Fatalf("blocked_clients before anyone blocks: %q", got)
	}
	b := dialRaw(t, f.Addr)
	b.send("BLPOP", "q", "5")
	waitBlocked(t, f, 1)
	if got := infoField(t, c, "clients", "blocked_clients"); got != "1" {
		t.Errorf("blocked_clients while a funnel client blocks in BLPOP: %q, want 1", got)
	}
	c.do("LPUSH", "q", "x")
	b.reply()

	// Two errors, and INFO read; then the counters are reset.
	c.do("SET", "str", "x")
	c.do("LPUSH", "str", "y")
	c.do("LPUSH", "str", "y")
	c.do("INFO", "stats")
	c.do("INFO", "errorstats")
	c.do("CONFIG", "RESETSTAT")
	if got := c.do("LPUSH", "str", "y"); !strings.HasPrefix(got, "-WRONGTYPE") {
		t.Fatalf("LPUSH on a string: %q", got)
	}
	if got := infoField(t, c, "stats", "total_error_replies"); got != "1" {
		t.Errorf("total_error_replies after CONFIG RESETSTAT and one error: %q, want 1", got)
	}
	if got := infoField(t, c, "errorstats", "errorstat_WRONGTYPE"); got != "count=1" {
		t.Errorf("errorstat_WRONGTYPE after CONFIG RESETSTAT and one error: %q, want count=1", got)
	}

	// 25 clients of funnel (c, b and 23 more): connected_clients says 25,
	// whatever the upstream connections.
	for i := 0; i < 23; i++ {
		dialRaw(t, f.Addr).do("PING")
	}
	waitUntil(t, 5*time.Second, "25 sessions", func() bool { return f.Server.sessionCount() == 25 })
	if got := infoField(t, c, "clients", "connected_clients"); got != "25" {
		t.Errorf("connected_clients with 25 funnel clients: %q, want 25", got)
	}
}
