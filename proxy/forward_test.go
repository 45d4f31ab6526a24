package proxy

import (
	"strings"
	"testing"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
)

// rawCommands covers every data type, expiry, scripts, errors and reply
// shapes (nil bulk, nil array, empty array, nested arrays, errors inside
// arrays). They run in order on two identical servers, one direct and one
// through funnel, and every reply must be byte for byte the same.
var rawCommands = [][]string{
	{"SET", "s", "hello"}, {"GET", "s"}, {"GET", "missing"}, {"APPEND", "s", " world"},
	{"STRLEN", "s"}, {"GETRANGE", "s", "0", "4"}, {"SETRANGE", "s", "0", "J"}, {"INCR", "n"},
	{"INCRBY", "n", "10"}, {"INCRBYFLOAT", "n", "1.5"}, {"DECR", "missingn"}, {"MSET", "a", "1", "b", "2"},
	{"MGET", "a", "b", "missing"}, {"SETNX", "a", "3"}, {"GETSET", "a", "4"}, {"GETDEL", "b"},
	{"SET", "e", "v", "EX", "100"}, {"TTL", "e"}, {"PERSIST", "e"}, {"PTTL", "e"}, {"EXPIRE", "e", "50"},
	{"EXISTS", "a", "e", "zz"}, {"TYPE", "a"}, {"DEL", "a", "zz"}, {"RENAME", "e", "e2"}, {"UNLINK", "e2"},
	{"HSET", "h", "f1", "v1", "f2", "v2"}, {"HGET", "h", "f1"}, {"HGETALL", "h"}, {"HMGET", "h", "f1", "nope"},
	{"HINCRBY", "h", "cnt", "3"}, {"HDEL", "h", "f2"}, {"HLEN", "h"}, {"HKEYS", "h"}, {"HEXISTS", "h", "f1"},
	{"RPUSH", "l", "a", "b", "c"}, {"LPUSH", "l", "z"}, {"LRANGE", "l", "0", "-1"}, {"LRANGE", "nol", "0", "-1"},
	{"LPOP", "l"}, {"RPOP", "l", "2"}, {"LPOP", "nol", "2"}, {"LLEN", "l"}, {"LINDEX", "l", "0"}, {"LINSERT", "l", "BEFORE", "a", "q"},
	{"SADD", "set", "m1", "m2", "m3"}, {"SISMEMBER", "set", "m1"}, {"SCARD", "set"}, {"SREM", "set", "m2"},
	{"SINTERCARD", "1", "set"}, {"SMISMEMBER", "set", "m1", "x"},
	{"ZADD", "z", "1", "one", "2", "two", "3", "three"}, {"ZRANGE", "z", "0", "-1", "WITHSCORES"}, {"ZSCORE", "z", "two"},
	{"ZINCRBY", "z", "2.5", "one"}, {"ZRANK", "z", "three"}, {"ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", "0", "2"},
	{"ZPOPMIN", "z"}, {"ZCARD", "z"}, {"ZUNIONSTORE", "zu", "2", "z", "z", "WEIGHTS", "1", "2"}, {"ZRANGE", "zu", "0", "-1"},
	{"XADD", "st", "1-1", "f", "v"}, {"XADD", "st", "2-1", "f", "w", "g", "x"}, {"XRANGE", "st", "-", "+"},
	{"XLEN", "st"}, {"XREAD", "COUNT", "5", "STREAMS", "st", "0"}, {"XREAD", "STREAMS", "st", "$"},
	{"XGROUP", "CREATE", "st", "grp", "0"}, {"XREADGROUP", "GROUP", "grp", "c1", "COUNT", "1", "STREAMS", "st", ">"},
	{"XPENDING", "st", "grp"}, {"XACK", "st", "grp", "1-1"}, {"XINFO", "GROUPS", "st"},
	{"GET", "h"}, {"LPUSH", "s", "x"}, {"INCR", "s"}, {"NOSUCHCOMMAND", "x"}, {"GET"}, {"SET", "k"},
	{"EVAL", "return {1, 'two', {3, 'four'}, redis.error_reply('inner error'), false}", "0"},
	{"EVAL", "return redis.call('GET', KEYS[1])", "1", "s"},
	{"EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0"},
	{"SCRIPT", "LOAD", "return ARGV[1]"}, {"EVALSHA", "098e0f0d1448c0a81dafe820f66d460eb09263da", "0", "arg"},
	{"EVAL", "return redis.call('NOPE')", "0"},
	{"SCAN", "0", "MATCH", "nomatch*", "COUNT", "1000"}, {"OBJECT", "ENCODING", "l"}, {"DBSIZE"},
	{"SET", "bin", binaryValue()}, {"GET", "bin"},
	{"SET", "big1", strings.Repeat("x", 1<<20)}, {"GET", "big1"},
	{"SET", "big50", strings.Repeat("y", 50<<20)}, {"STRLEN", "big50"}, {"GET", "big50"},
	{"ECHO", "hi"}, {"PING"}, {"PING", "msg"},
	{"EVAL", "return redis.setresp(3) and {double=1.5}", "0"}, {"EVAL", "return redis.call('HGETALL', KEYS[1])", "1", "h"},
	{"CLIENT", "GETNAME"}, {"COMMAND", "INFO", "get"}, {"BLPOP", "nol", "0.01"}, {"BZPOPMIN", "noz", "0.01"},
	{"MULTI"}, {"HGETALL", "h"}, {"ZSCORE", "z", "two"}, {"EXEC"},
}

func binaryValue() string {
	b := make([]byte, 0, 512)
	for i := 0; i < 512; i++ {
		b = append(b, byte(i))
	}
	return string(b)
}

// TestRawRepliesMatchDirect runs rawCommands in RESP2 and, after HELLO 3, in
// RESP3, where maps, sets, doubles, nulls and verbatim strings come back
// from RESP3 upstream connections as Redis sent them.
func TestRawRepliesMatchDirect(t *testing.T) {
	if len(rawCommands) < 60 {
		t.Fatalf("only %d commands", len(rawCommands))
	}
	for _, proto := range []string{"2", "3"} {
		t.Run("resp"+proto, func(t *testing.T) {
			direct := redistest.Start(t)
			f := startFunnel(t, Options{}, pool.Options{})
			dc := dialRaw(t, direct.Addr)
			fc := dialRaw(t, f.Addr)
			want, got := dc.do("HELLO", proto), fc.do("HELLO", proto)
			if strings.Contains(want, "proto\r\n:"+proto) != strings.Contains(got, "proto\r\n:"+proto) || got[0] != want[0] {
				t.Fatalf("HELLO %s: through funnel %q, direct %q", proto, got, want)
			}
			for _, cmd := range rawCommands {
				want := dc.do(cmd...)
				got := fc.do(cmd...)
				if got != want {
					t.Errorf("%s: through funnel %q, direct %q", short(strings.Join(cmd, " ")), short(got), short(want))
				}
			}
			// The same commands pipelined in one write must give the same
			// bytes too.
			var want2 []string
			for _, cmd := range rawCommands[:40] {
				fc.send(cmd...)
				want2 = append(want2, dc.do(cmd...))
			}
			for i := range want2 {
				if got := fc.reply(); got != want2[i] {
					t.Errorf("pipelined %d: got %q want %q", i, short(got), short(want2[i]))
				}
			}
		})
	}
}
