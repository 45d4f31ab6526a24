package proxy

import (
	"context"
	"strings"
	"testing"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/redis/go-redis/v9"
)

// TestHandshakeCostsNothingUpstream replays the ioredis 6 handshake (HELLO
// 3, CLIENT SETINFO twice, INFO), redis-cli's (RESP2, no HELLO) and
// go-redis's default one on many connections. After the first INFO fetch,
// none of it reaches the upstream; only the RESP3 pool's connections each
// said HELLO 3 once, when they were dialed.
func TestHandshakeCostsNothingUpstream(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 3})
	ctx := context.Background()
	before := f.Redis.CommandStats(t)
	for i := 0; i < 20; i++ {
		c := dialRaw(t, f.Addr)
		if got := c.do("HELLO", "3"); !strings.HasPrefix(got, "%7\r\n$6\r\nserver\r\n") || !strings.Contains(got, "proto\r\n:3\r\n") {
			t.Fatalf("HELLO 3: %q", got)
		}
		for _, kv := range [][2]string{{"LIB-NAME", "ioredis"}, {"LIB-VER", "6.0.0"}} {
			if got := c.do("CLIENT", "SETINFO", kv[0], kv[1]); got != "+OK\r\n" {
				t.Fatalf("CLIENT SETINFO: %q", got)
			}
		}
		info := c.do("INFO")
		if !strings.HasPrefix(info, "=") || !strings.Contains(info, "txt:# Server") {
			t.Fatalf("INFO in RESP3 is not a verbatim string: %q", short(info))
		}
		for _, want := range []string{"redis_version:", "loading:0", "maxmemory_policy:", "# Funnel"} {
			if !strings.Contains(info, want) {
				t.Fatalf("INFO lacks %q", want)
			}
		}
		if got := c.do("CLIENT", "SETNAME", "worker:"+string(rune('a'+i))); got != "+OK\r\n" {
			t.Fatalf("SETNAME: %q", got)
		}
		if got := c.do("GET", "k"); got != "_\r\n" {
			t.Fatalf("GET of a missing key in RESP3: %q", got)
		}
		cli := dialRaw(t, f.Addr)
		if info := cli.do("INFO", "server"); !strings.HasPrefix(info, "$") {
			t.Fatalf("INFO in RESP2 is not a bulk string: %q", short(info))
		}
		cli.do("QUIT")
		rdb := redis.NewClient(&redis.Options{Addr: f.Addr, ClientName: "gr", PoolSize: 1})
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		rdb.Close()
		c.do("QUIT")
	}
	stats := f.Redis.CommandStats(t)
	for _, cmd := range []string{"client|setinfo", "client|setname", "ping", "quit", "select", "auth"} {
		if stats[cmd] != before[cmd] {
			t.Errorf("upstream ran %s %d times", cmd, stats[cmd]-before[cmd])
		}
	}
	if n := stats["hello"] - before["hello"]; n < 1 || n > 3 {
		t.Errorf("upstream ran HELLO %d times, want once per RESP3 pool connection (1 to 3)", n)
	}
	// The earlier CommandStats call was an INFO of its own. INFO and INFO
	// server are cached apart.
	if got := stats["info"] - before["info"] - 1; got != 2 {
		t.Errorf("upstream ran INFO %d times, want 2 (cached)", got)
	}
}

// TestHelloAndReadyCheckShareOneInfo: HELLO needs the upstream's version
// and ioredis's ready check then sends INFO; both are answered from one
// upstream INFO.
func TestHelloAndReadyCheckShareOneInfo(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 1})
	before := f.Redis.CommandStats(t)
	c := dialRaw(t, f.Addr)
	if got := c.do("HELLO", "3"); !strings.Contains(got, "version\r\n$") {
		t.Fatalf("HELLO 3: %q", short(got))
	}
	if info := c.do("INFO"); !strings.Contains(info, "redis_version:") {
		t.Fatalf("INFO: %q", short(info))
	}
	// The second CommandStats is an INFO of its own.
	if got := f.Redis.CommandStats(t)["info"] - before["info"] - 1; got != 1 {
		t.Errorf("upstream ran INFO %d times for HELLO and the ready check, want 1", got)
	}
}

func TestLocalReplies(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	before := f.Redis.CommandStats(t)
	c := dialRaw(t, f.Addr)
	cases := []struct {
		cmd  []string
		want string
	}{
		{[]string{"PING"}, "+PONG\r\n"},
		{[]string{"PING", "x y"}, "$3\r\nx y\r\n"},
		{[]string{"PING", "a", "b"}, "-ERR wrong number of arguments for 'ping' command\r\n"},
		{[]string{"ECHO", "e"}, "$1\r\ne\r\n"},
		{[]string{"ECHO"}, "-ERR wrong number of arguments for 'echo' command\r\n"},
		{[]string{"CLIENT", "GETNAME"}, "$-1\r\n"},
		{[]string{"CLIENT", "SETNAME", "bad name"}, "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"},
		{[]string{"CLIENT", "SETNAME", "w1"}, "+OK\r\n"},
		{[]string{"CLIENT", "GETNAME"}, "$2\r\nw1\r\n"},
		{[]string{"CLIENT", "SETINFO", "LIB-FOO", "x"}, "-ERR Unrecognized option 'LIB-FOO'\r\n"},
		{[]string{"CLIENT", "NO-EVICT", "on"}, "+OK\r\n"},
		{[]string{"CLIENT", "NO-TOUCH", "maybe"}, "-ERR syntax error\r\n"},
		{[]string{"CLIENT", "BOGUS"}, "-ERR unknown subcommand 'BOGUS'. Try CLIENT HELP.\r\n"},
		{[]string{"CLIENT", "KILL", "ID", "1"}, "-ERR funnel: CLIENT KILL is not supported through the proxy\r\n"},
		{[]string{"CLIENT", "TRACKING", "on"}, "-ERR funnel: CLIENT TRACKING is not supported through the proxy\r\n"},
		{[]string{"MONITOR"}, "-ERR funnel: MONITOR is not supported through the proxy\r\n"},
		{[]string{"SHUTDOWN"}, "-ERR funnel: SHUTDOWN is not supported through the proxy\r\n"},
		{[]string{"SELECT", "0"}, "+OK\r\n"},
		{[]string{"SELECT", "x"}, "-ERR value is not an integer or out of range\r\n"},
		{[]string{"AUTH", "pw"}, "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"},
		{[]string{"AUTH", "default", "anything"}, "+OK\r\n"},
		{[]string{"HELLO", "4"}, "-NOPROTO unsupported protocol version\r\n"},
		{[]string{"HELLO", "x"}, "-ERR Protocol version is not an integer or out of range\r\n"},
		{[]string{"HELLO", "2", "FOO"}, "-ERR Syntax error in HELLO option 'FOO'\r\n"},
		{[]string{"RESET"}, "+RESET\r\n"},
		{[]string{"CLIENT", "GETNAME"}, "$-1\r\n"},
	}
	for _, tc := range cases {
		if got := c.do(tc.cmd...); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.cmd, got, tc.want)
		}
	}
	hello := c.do("HELLO", "2", "SETNAME", "hi")
	if !strings.HasPrefix(hello, "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n") || !strings.Contains(hello, "$5\r\nproto\r\n:2\r\n") {
		t.Errorf("HELLO 2: %q", hello)
	}
	id := c.do("CLIENT", "ID")
	list := c.do("CLIENT", "LIST")
	line := strings.SplitN(list, "\r\n", 2)[1]
	for _, field := range []string{"id=" + strings.Trim(id, ":\r\n") + " ", " name=hi ", " flags=N ", " db=0 ", " cmd=client|list ", " resp=2 "} {
		if !strings.Contains(line, field) {
			t.Errorf("CLIENT LIST line lacks %q: %q", field, line)
		}
	}
	if got := c.do("CLIENT", "LIST", "TYPE", "pubsub"); got != "$0\r\n\r\n" {
		t.Errorf("CLIENT LIST TYPE pubsub: %q", got)
	}
	if got := c.do("INFO", "funnel"); !strings.Contains(got, "funnel_connected_clients:1\r\n") || strings.Contains(got, "redis_version") {
		t.Errorf("INFO funnel: %q", got)
	}
	if got := c.do("COMMAND", "COUNT"); !strings.HasPrefix(got, ":") {
		t.Errorf("COMMAND COUNT: %q", got)
	}
	if got := c.do("COMMAND", "GETKEYS", "GET", "k"); got != "*1\r\n$1\r\nk\r\n" {
		t.Errorf("COMMAND GETKEYS: %q", got)
	}
	if got := c.do("QUIT"); got != "+OK\r\n" {
		t.Errorf("QUIT: %q", got)
	}
	if _, err := c.tryReply(2e9); err == nil {
		t.Error("connection still open after QUIT")
	}
	stats := f.Redis.CommandStats(t)
	if stats["command|count"] != 1 || stats["ping"]-before["ping"]+stats["echo"]+stats["client|setname"]+stats["hello"] != 0 {
		t.Errorf("upstream stats: %v", stats)
	}
}

func TestRequirePass(t *testing.T) {
	f := startFunnel(t, Options{RequirePass: "s3cret", Deny: []string{"flushall", "config set"}}, pool.Options{})
	c := dialRaw(t, f.Addr)
	cases := []struct {
		cmd  []string
		want string
	}{
		{[]string{"GET", "k"}, "-NOAUTH Authentication required.\r\n"},
		{[]string{"HELLO", "2"}, "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"},
		{[]string{"AUTH", "wrong"}, "-WRONGPASS invalid username-password pair or user is disabled.\r\n"},
		{[]string{"AUTH", "bob", "s3cret"}, "-WRONGPASS invalid username-password pair or user is disabled.\r\n"},
		{[]string{"AUTH", "s3cret"}, "+OK\r\n"},
		{[]string{"GET", "k"}, "$-1\r\n"},
		{[]string{"FLUSHALL"}, "-ERR funnel: FLUSHALL is not supported through the proxy\r\n"},
		{[]string{"CONFIG", "SET", "x", "y"}, "-ERR funnel: CONFIG SET is not supported through the proxy\r\n"},
		{[]string{"RESET"}, "+RESET\r\n"},
		{[]string{"GET", "k"}, "-NOAUTH Authentication required.\r\n"},
		{[]string{"AUTH", "default", "s3cret"}, "+OK\r\n"},
	}
	for _, tc := range cases {
		if got := c.do(tc.cmd...); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.cmd, got, tc.want)
		}
	}
	// go-redis logs in with HELLO 3 AUTH, gets NOPROTO, and falls back to AUTH.
	rdb := redis.NewClient(&redis.Options{Addr: f.Addr, Password: "s3cret", PoolSize: 1})
	defer rdb.Close()
	if err := rdb.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
}
