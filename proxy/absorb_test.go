package proxy

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// hsetCount returns how many HSET and HMSET the upstream ran.
func hsetCount(t *testing.T, f *funnel) int {
	t.Helper()
	st := f.Redis.CommandStats(t)
	return st["hset"] + st["hmset"]
}

// learnt writes the hash through c and waits until funnel knows it (its
// expiry check answered), so the next identical write may be absorbed.
func learnt(t *testing.T, f *funnel, c *rawConn, args ...string) {
	t.Helper()
	if got := c.do(args...); got[0] == '-' {
		t.Fatalf("%v: %q", args, got)
	}
	waitUntil(t, 5*time.Second, "funnel to check the key's expiry", func() bool {
		return f.Redis.CommandStats(t)["pttl"] > 0 && f.Server.cache.HashHolds(0, []byte(args[1]), toBytes(args[2:]), time.Now())
	})
}

func toBytes(ss []string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		out = append(out, []byte(s))
	}
	return out
}

// TestAbsorbIdempotentHSET: under an absorb rule, an HSET of values the hash
// is known to hold is answered by funnel, and everything that could make
// that wrong sends it upstream instead.
func TestAbsorbIdempotentHSET(t *testing.T) {
	f := startFunnel(t, Options{AbsorbRules: []AbsorbRule{{Pattern: "meta:*", Window: time.Minute}, {Pattern: "short:*", Window: 300 * time.Millisecond}}}, pool.Options{})
	c := dialRaw(t, f.Addr)
	learnt(t, f, c, "HSET", "meta:q", "opts.maxLenEvents", "10000", "version", "bullmq:6.7.0")
	base := hsetCount(t, f)
	for range 10 {
		if got := c.do("HSET", "meta:q", "opts.maxLenEvents", "10000", "version", "bullmq:6.7.0"); got != ":0\r\n" {
			t.Fatalf("absorbed HSET: %q", got)
		}
		if got := c.do("HMSET", "meta:q", "version", "bullmq:6.7.0"); got != "+OK\r\n" {
			t.Fatalf("absorbed HMSET: %q", got)
		}
	}
	if n := hsetCount(t, f) - base; n != 0 {
		t.Fatalf("upstream ran %d HSETs the hash already held", n)
	}
	if got := f.Server.metrics.Absorbed.Load(); got != 20 {
		t.Errorf("absorbed %d, want 20", got)
	}
	sent := func(what string, args ...string) {
		t.Helper()
		before := hsetCount(t, f)
		c.do(args...)
		if hsetCount(t, f) == before {
			t.Errorf("%s: absorbed, want sent upstream", what)
		}
	}
	sent("another value", "HSET", "meta:q", "version", "bullmq:7")
	learnt(t, f, c, "HSET", "meta:q", "version", "bullmq:6.7.0")
	sent("a field funnel does not know", "HSET", "meta:q", "version", "bullmq:6.7.0", "paused", "1")

	// Any write to the key forgets what funnel knew.
	for _, w := range [][]string{{"DEL", "meta:q"}, {"HINCRBY", "meta:q", "n", "1"}, {"PERSIST", "meta:q"}} {
		learnt(t, f, c, "HSET", "meta:q", "version", "bullmq:6.7.0")
		c.do(w...)
		sent("after "+w[0], "HSET", "meta:q", "version", "bullmq:6.7.0")
	}
	// Inside MULTI, and while any client watches the key.
	learnt(t, f, c, "HSET", "meta:q", "version", "bullmq:6.7.0")
	c.do("MULTI")
	c.do("HSET", "meta:q", "version", "bullmq:6.7.0")
	before := hsetCount(t, f)
	c.do("EXEC")
	if hsetCount(t, f) == before {
		t.Error("an HSET inside MULTI was absorbed")
	}
	learnt(t, f, c, "HSET", "meta:q", "version", "bullmq:6.7.0")
	watcher := dialRaw(t, f.Addr)
	watcher.do("WATCH", "meta:q")
	sent("while another client watches the key", "HSET", "meta:q", "version", "bullmq:6.7.0")
	watcher.do("UNWATCH")
	learnt(t, f, c, "HSET", "meta:q", "version", "bullmq:6.7.0")
	if got := c.do("HSET", "meta:q", "version", "bullmq:6.7.0"); got != ":0\r\n" {
		t.Errorf("after the WATCH ended: %q, want absorbed", got)
	}

	// An expiry funnel did not see (set directly upstream): never absorbed.
	if _, err := f.Redis.Do("HSET", "meta:ttl", "a", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Redis.Do("PEXPIRE", "meta:ttl", "100000"); err != nil {
		t.Fatal(err)
	}
	c.do("HSET", "meta:ttl", "a", "1")
	time.Sleep(200 * time.Millisecond) // the expiry check comes back
	sent("a key with an expiry funnel did not set", "HSET", "meta:ttl", "a", "1")
	// An expiry funnel saw.
	learnt(t, f, c, "HSET", "meta:seen", "a", "1")
	c.do("PEXPIRE", "meta:seen", "100000")
	learntOrNot := hsetCount(t, f)
	c.do("HSET", "meta:seen", "a", "1")
	if hsetCount(t, f) == learntOrNot {
		t.Error("absorbed an HSET of a key funnel saw given an expiry")
	}

	// The window.
	learnt(t, f, c, "HSET", "short:q", "a", "1")
	time.Sleep(400 * time.Millisecond)
	sent("after the rule's window", "HSET", "short:q", "a", "1")

	// Keys no rule names are never absorbed.
	c.do("HSET", "other:q", "a", "1")
	time.Sleep(100 * time.Millisecond)
	sent("no rule", "HSET", "other:q", "a", "1")

	info := c.do("INFO", "funnel")
	if want := "funnel_absorbed_writes:" + strconv.FormatInt(f.Server.metrics.Absorbed.Load(), 10); !strings.Contains(info, want) {
		t.Errorf("INFO funnel lacks %q", want)
	}
}

// TestScriptKeysOnlyReadStayKnown: a script funnel saw that only reads a
// declared key (as BullMQ's moveToActive reads the queue's meta hash) does
// not make funnel forget what the key holds: the next identical HSET is
// still absorbed and a cached read of the key still served. A script that
// may write the key, or one known only by its SHA1, does.
func TestScriptKeysOnlyReadStayKnown(t *testing.T) {
	f := startFunnel(t, Options{
		AbsorbRules: []AbsorbRule{{Pattern: "meta:*", Window: time.Minute}},
		CacheRules:  []CacheRule{{Pattern: "meta:*", TTL: time.Minute}},
	}, pool.Options{})
	c := dialRaw(t, f.Addr)
	reads := `local rcall = redis.call
local function paused(metaKey) return rcall("HGET", metaKey, "paused") end
local p = paused(KEYS[1])
rcall("INCR", KEYS[2])
return p`
	writes := `redis.call("HSET", KEYS[1], "opts.maxLenEvents", "10000") return redis.call("INCR", KEYS[2])`
	learnt(t, f, c, "HSET", "meta:q", "version", "1")
	hgets := func() int { return f.Redis.CommandStats(t)["hget"] }
	c.do("HGET", "meta:q", "version") // fills the cache
	if got := c.do("EVAL", reads, "2", "meta:q", "counter"); got[0] == '-' {
		t.Fatalf("EVAL: %q", got)
	}
	before := hgets()
	if got := c.do("HGET", "meta:q", "version"); got != "$1\r\n1\r\n" || hgets() != before {
		t.Errorf("after a script that only reads meta:q, HGET %q went upstream %d times, want 0 (cached)", got, hgets()-before)
	}
	if got := c.do("HSET", "meta:q", "version", "1"); got != ":0\r\n" || f.Server.metrics.Absorbed.Load() != 1 {
		t.Errorf("after a script that only reads meta:q, HSET %q was not absorbed", got)
	}
	sha := strings.TrimSpace(strings.SplitN(c.do("SCRIPT", "LOAD", writes), "\r\n", 3)[1])
	for _, call := range [][]string{{"EVAL", writes, "2", "meta:q", "counter"}, {"EVALSHA", sha, "2", "meta:q", "counter"}} {
		learnt(t, f, c, "HSET", "meta:q", "version", "1")
		c.do(call...)
		before := hsetCount(t, f)
		c.do("HSET", "meta:q", "version", "1")
		if hsetCount(t, f) == before {
			t.Errorf("after %s of a script that writes meta:q, the HSET was absorbed", call[0])
		}
	}
	// A script known only by its SHA1 (loaded by another process).
	other := `return redis.call("HGET", KEYS[1], "version")`
	loaded, err := f.Redis.DoRaw("SCRIPT", "LOAD", other)
	if err != nil {
		t.Fatal(err)
	}
	osha := strings.SplitN(loaded, "\r\n", 3)[1]
	learnt(t, f, c, "HSET", "meta:q", "version", "1")
	if got := c.do("EVALSHA", osha, "1", "meta:q"); got[0] == '-' {
		t.Fatalf("EVALSHA: %q", got)
	}
	before = hsetCount(t, f)
	c.do("HSET", "meta:q", "version", "1")
	if hsetCount(t, f) == before {
		t.Error("after EVALSHA of a script funnel never saw, the HSET was absorbed")
	}
}

// TestNoExpiryRemembered: funnel asks whether a hash has an expiry (PTTL)
// once per rule window, not after every write that made it learn the
// values again, as long as what it saw since cannot have given the key an
// expiry (HINCRBY, HSET, a script that only HSETs it); a write that can
// (PEXPIRE, a script that may) makes it ask again.
func TestNoExpiryRemembered(t *testing.T) {
	f := startFunnel(t, Options{AbsorbRules: []AbsorbRule{{Pattern: "meta:*", Window: time.Minute}}}, pool.Options{})
	c := dialRaw(t, f.Addr)
	pttls := func() int { return f.Redis.CommandStats(t)["pttl"] }
	learnt(t, f, c, "HSET", "meta:q", "v", "1")
	asked := pttls()
	relearn := func(what string, wantAsk bool) {
		t.Helper()
		before := hsetCount(t, f)
		c.do("HSET", "meta:q", "v", "1") // forgotten values: sent, and learnt again
		if hsetCount(t, f) == before {
			t.Fatalf("after %s: the HSET was absorbed, want sent (the values were forgotten)", what)
		}
		if wantAsk {
			waitUntil(t, 5*time.Second, "funnel to ask for the expiry", func() bool { return pttls() > asked })
			asked = pttls()
		} else if got := c.do("HSET", "meta:q", "v", "1"); got != ":0\r\n" || pttls() != asked {
			t.Fatalf("after %s: HSET %q, PTTL asked %d more times; want absorbed without asking", what, got, pttls()-asked)
		}
	}
	c.do("HINCRBY", "meta:q", "n", "1")
	relearn("HINCRBY", false)
	c.do("EVAL", `redis.call("HSET", KEYS[1], "x", "y") return 1`, "1", "meta:q")
	relearn("a script that only HSETs the key", false)
	c.do("EVAL", `redis.call("HSET", KEYS[1], "x", "y") redis.call("PERSIST", KEYS[1]) return redis.call("PEXPIRE", KEYS[1], ARGV[1])`, "1", "meta:q", "100000")
	relearn("a script that may give the key an expiry", true)
	before := hsetCount(t, f)
	c.do("HSET", "meta:q", "v", "1")
	if hsetCount(t, f) == before {
		t.Fatal("absorbed an HSET of a key a script gave an expiry")
	}
	c.do("PERSIST", "meta:q")
	learnt(t, f, c, "HSET", "meta:q", "v", "1")
	asked = pttls()
	c.do("PEXPIRE", "meta:q", "100000")
	relearn("PEXPIRE", true)
}

// TestAbsorbLearnsFromOverlappingHSETs: identical HSETs in flight together
// (many new Queues at once) teach funnel the hash's values as one alone
// would, and while only such HSETs are in flight more of them are
// absorbed: under a flood of them from 4 clients, most never go upstream.
func TestAbsorbLearnsFromOverlappingHSETs(t *testing.T) {
	f := startFunnel(t, Options{AbsorbRules: []AbsorbRule{{Pattern: "meta:*", Window: time.Minute}}}, pool.Options{Size: 2})
	const clients, bursts, perBurst = 4, 20, 20
	var burst []byte
	for range perBurst {
		burst = resp.AppendCommand(burst, []byte("HSET"), []byte("meta:q"), []byte("opts.maxLenEvents"), []byte("10000"), []byte("version"), []byte("6.7"))
	}
	before := hsetCount(t, f)
	var wg sync.WaitGroup
	for range clients {
		c := dialRaw(t, f.Addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range bursts {
				if _, err := c.conn.Write(burst); err != nil {
					t.Error(err)
					return
				}
				for range perBurst {
					if got, err := c.tryReply(10 * time.Second); err != nil || (got != ":0\r\n" && got != ":2\r\n") {
						t.Errorf("HSET: %q %v", got, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	sent, total := hsetCount(t, f)-before, clients*bursts*perBurst
	t.Logf("%d of %d overlapping identical HSETs went upstream, %d absorbed", sent, total, f.Server.metrics.Absorbed.Load())
	if sent > total/2 {
		t.Errorf("%d of %d identical HSETs went upstream: overlapping ones taught funnel nothing", sent, total)
	}
}

// TestAbsorbStaysTrueUnderFlood: while clients flood funnel with identical
// HSETs, another deletes a field and writes the same HSET again: its HSET,
// absorbed or not, must leave the field there (only it deletes): funnel
// never answers for values a write it saw has changed, flood or not. (The
// flood re-adds the field quickly, which hides a run learnt across a write;
// cache's TestHashSetRuns checks that rule deterministically.)
func TestAbsorbStaysTrueUnderFlood(t *testing.T) {
	f := startFunnel(t, Options{AbsorbRules: []AbsorbRule{{Pattern: "meta:*", Window: time.Minute}}}, pool.Options{Size: 3})
	pairs := []string{"opts.maxLenEvents", "10000", "version", "6.7"}
	var burst []byte
	for range 10 {
		burst = resp.AppendCommand(burst, toBytes(append([]string{"HSET", "meta:q"}, pairs...))...)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		c := dialRaw(t, f.Addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !isClosed(stop) {
				if _, err := c.conn.Write(burst); err != nil {
					t.Error(err)
					return
				}
				for range 10 {
					if _, err := c.tryReply(10 * time.Second); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	z := dialRaw(t, f.Addr)
	bad := 0
	for range 300 {
		z.do("HDEL", "meta:q", "version")
		z.do(append([]string{"HSET", "meta:q"}, pairs...)...)
		if got := z.do("HEXISTS", "meta:q", "version"); got != ":1\r\n" {
			bad++
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("absorbed %d HSETs", f.Server.metrics.Absorbed.Load())
	if bad > 0 {
		t.Errorf("%d of 300 times a field was missing right after the HSET that sets it", bad)
	}
}
