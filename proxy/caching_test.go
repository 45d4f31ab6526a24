package proxy

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/redis/go-redis/v9"
)

func cachingFunnel(t *testing.T, ttl time.Duration, opts Options) *funnel {
	t.Helper()
	opts.CacheRules = []CacheRule{{Pattern: "c:*", TTL: ttl}}
	return startFunnel(t, opts, pool.Options{})
}

func TestCacheServesRepeatedReads(t *testing.T) {
	f := cachingFunnel(t, 10*time.Second, Options{})
	c := dialRaw(t, f.Addr)
	c.do("SET", "c:k", "v1")
	before := f.Redis.CommandStats(t)["get"]
	for i := 0; i < 50; i++ {
		if got := c.do("GET", "c:k"); got != "$2\r\nv1\r\n" {
			t.Fatalf("GET: %q", got)
		}
		c.do("GET", "c:missing") // nil replies are cached too
	}
	if n := f.Redis.CommandStats(t)["get"] - before; n != 2 {
		t.Fatalf("upstream ran GET %d times for 100 reads of 2 keys", n)
	}
	// Keys no rule matches are not cached.
	c.do("SET", "other", "x")
	c.do("GET", "other")
	c.do("GET", "other")
	if n := f.Redis.CommandStats(t)["get"] - before; n != 4 {
		t.Fatalf("uncached key: upstream GETs %d, want 4", n)
	}
}

// TestCacheReadYourWrites: after its own write, pipelined or not, inside
// MULTI or out, a client never reads the older cached value.
func TestCacheReadYourWrites(t *testing.T) {
	f := cachingFunnel(t, time.Minute, Options{})
	c := dialRaw(t, f.Addr)
	for i := 0; i < 50; i++ {
		v := strconv.Itoa(i)
		c.do("GET", "c:k") // fill the cache
		c.send("SET", "c:k", v)
		c.send("GET", "c:k")
		if got := c.reply() + c.reply(); got != "+OK\r\n$"+strconv.Itoa(len(v))+"\r\n"+v+"\r\n" {
			t.Fatalf("pipelined SET, GET: %q", got)
		}
	}
	c.do("GET", "c:m")
	c.do("MULTI")
	c.do("SET", "c:m", "in-tx")
	c.do("EXEC")
	if got := c.do("GET", "c:m"); got != "$5\r\nin-tx\r\n" {
		t.Fatalf("GET after EXEC: %q", got)
	}
	c.do("HGETALL", "c:h")
	c.do("EVAL", "redis.call('HSET', KEYS[1], 'f', 'v') return 1", "1", "c:h")
	if got := c.do("HGETALL", "c:h"); got != "*2\r\n$1\r\nf\r\n$1\r\nv\r\n" {
		t.Fatalf("HGETALL after a script declared the key: %q", got)
	}
	c.do("GET", "c:k")
	c.do("FLUSHALL")
	if got := c.do("GET", "c:k"); got != "$-1\r\n" {
		t.Fatalf("GET after FLUSHALL: %q", got)
	}
	c.do("SET", "c:u", "1")
	c.do("GET", "c:u")
	c.do("NOSUCHCOMMAND") // unknown commands may write anything
	c.do("SET", "c:u", "2")
	if got := c.do("GET", "c:u"); got != "$1\r\n2\r\n" {
		t.Fatalf("GET: %q", got)
	}
}

func TestCacheTTLExpiry(t *testing.T) {
	f := cachingFunnel(t, time.Second, Options{})
	c := dialRaw(t, f.Addr)
	c.do("SET", "c:k", "old")
	c.do("GET", "c:k")
	// A write funnel does not see, straight to the upstream.
	if _, err := f.Redis.Do("SET", "c:k", "new"); err != nil {
		t.Fatal(err)
	}
	if got := c.do("GET", "c:k"); got != "$3\r\nold\r\n" {
		t.Fatalf("within the TTL: %q", got)
	}
	time.Sleep(1100 * time.Millisecond)
	if got := c.do("GET", "c:k"); got != "$3\r\nnew\r\n" {
		t.Fatalf("after the TTL: %q", got)
	}
}

func TestCacheScriptsShareEntries(t *testing.T) {
	body := "return redis.call('GET', KEYS[1])"
	sum := sha1.Sum([]byte(body))
	sha := hex.EncodeToString(sum[:])
	f := cachingFunnel(t, time.Minute, Options{CacheScripts: []string{sha}})
	c := dialRaw(t, f.Addr)
	c.do("SET", "c:s", "val")
	before := f.Redis.CommandStats(t)
	if got := c.do("EVAL", body, "1", "c:s"); got != "$3\r\nval\r\n" {
		t.Fatalf("EVAL: %q", got)
	}
	for i := 0; i < 10; i++ {
		if got := c.do("EVALSHA", sha, "1", "c:s"); got != "$3\r\nval\r\n" {
			t.Fatalf("EVALSHA: %q", got)
		}
	}
	after := f.Redis.CommandStats(t)
	if after["eval"]-before["eval"] != 1 || after["evalsha"]-before["evalsha"] != 0 {
		t.Fatalf("upstream ran EVAL %d and EVALSHA %d times", after["eval"]-before["eval"], after["evalsha"]-before["evalsha"])
	}
	// A script not marked read-only invalidates its keys.
	c.do("EVAL", "return redis.call('SET', KEYS[1], 'w')", "1", "c:s")
	if got := c.do("EVALSHA", sha, "1", "c:s"); got != "$1\r\nw\r\n" {
		t.Fatalf("after a writing script: %q", got)
	}
}

func TestCacheMemoryBound(t *testing.T) {
	f := cachingFunnel(t, time.Minute, Options{CacheMaxBytes: 64 << 10, CacheMaxValue: 4 << 10})
	c := dialRaw(t, f.Addr)
	for i := 0; i < 500; i++ {
		c.do("SET", fmt.Sprint("c:", i), fmt.Sprintf("%01000d", i))
		c.do("GET", fmt.Sprint("c:", i))
		if st := f.Server.cache.Stats(); st.Bytes > 64<<10 {
			t.Fatalf("cache holds %d bytes", st.Bytes)
		}
	}
	c.do("SET", "c:big", string(make([]byte, 8<<10)))
	c.do("GET", "c:big")
	st := f.Server.cache.Stats()
	if st.Evictions == 0 || st.Entries == 0 || st.Entries > 64 {
		t.Fatalf("%+v", st)
	}
}

// write records one SET for the checker.
type write struct {
	value      int64
	sent, done time.Time
}

// TestCacheLinearizableWithinTTL runs 50 writers and 200 readers on 100 keys
// through funnel with caching and checks every read: it must return a value
// that was written, not before its write was sent, and not one that a later
// write had already replaced more than a TTL before the read began.
func TestCacheLinearizableWithinTTL(t *testing.T) {
	const ttl = 100 * time.Millisecond
	f := cachingFunnel(t, ttl, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	const keys = 100
	var seq atomic.Int64
	var mu sync.Mutex
	writes := make([][]write, keys)
	var wg sync.WaitGroup
	for w := 0; w < 50; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
			defer rdb.Close()
			rng := rand.New(rand.NewSource(int64(w)))
			for ctx.Err() == nil {
				k := rng.Intn(keys)
				v := seq.Add(1)
				// Recorded before it is sent: a write cut short by the end
				// of the run may still have landed, and have been read.
				mu.Lock()
				writes[k] = append(writes[k], write{value: v, sent: time.Now()})
				idx := len(writes[k]) - 1
				mu.Unlock()
				// Read-your-writes: a GET pipelined after the SET sees it
				// or a later value.
				pipe := rdb.Pipeline()
				pipe.Set(ctx, fmt.Sprint("c:", k), v, 0)
				get := pipe.Get(ctx, fmt.Sprint("c:", k))
				if _, err := pipe.Exec(ctx); err != nil {
					return
				}
				mu.Lock()
				writes[k][idx].done = time.Now()
				mu.Unlock()
				if got, _ := get.Int64(); got == 0 {
					t.Errorf("writer %d read nothing after its SET", w)
					return
				}
			}
		}(w)
	}
	type read struct {
		key        int
		value      int64
		start, end time.Time
	}
	reads := make(chan read, 1<<16)
	for r := 0; r < 200; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
			defer rdb.Close()
			rng := rand.New(rand.NewSource(int64(1000 + r)))
			for ctx.Err() == nil {
				k := rng.Intn(keys)
				start := time.Now()
				v, err := rdb.Get(ctx, fmt.Sprint("c:", k)).Int64()
				if err != nil && err != redis.Nil {
					return
				}
				select {
				case reads <- read{key: k, value: v, start: start, end: time.Now()}:
				default:
				}
			}
		}(r)
	}
	wg.Wait()
	close(reads)
	checked := 0
	for rd := range reads {
		ws := writes[rd.key]
		var own *write
		for i := range ws {
			if ws[i].value == rd.value {
				own = &ws[i]
			}
		}
		if rd.value == 0 {
			continue // read before any write of the key
		}
		if own == nil {
			t.Fatalf("key %d: read %d, which no writer wrote", rd.key, rd.value)
		}
		if own.sent.After(rd.end) {
			t.Fatalf("key %d: read %d before its write was sent", rd.key, rd.value)
		}
		for _, w := range ws {
			// w surely came after own (sent after own was answered), and was
			// answered more than a TTL before the read began.
			if !own.done.IsZero() && !w.done.IsZero() && w.sent.After(own.done) && w.done.Add(ttl).Before(rd.start) {
				t.Fatalf("key %d: read %d at %v, but %d replaced it at %v (TTL %v)",
					rd.key, rd.value, rd.start.Format("15:04:05.000"), w.value, w.done.Format("15:04:05.000"), ttl)
			}
		}
		checked++
	}
	st := f.Server.cache.Stats()
	t.Logf("checked %d reads; cache %+v", checked, st)
	if checked < 1000 || st.Hits == 0 {
		t.Fatalf("too little traffic to judge: %d reads, %d hits", checked, st.Hits)
	}
}

// TestCoalescingJoinsIdenticalReads sends one GET from many clients at once:
// the upstream runs fewer GETs than clients asked for, and every client gets
// the value.
func TestCoalescingJoinsIdenticalReads(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 1})
	ctx := context.Background()
	big := string(make([]byte, 256<<10)) // slow enough to overlap
	f.client(t).Set(ctx, "k", big, 0)
	before := f.Redis.CommandStats(t)["get"]
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
			defer rdb.Close()
			for j := 0; j < 5; j++ {
				if v, err := rdb.Get(ctx, "k").Result(); err != nil || len(v) != len(big) {
					t.Errorf("GET: %d bytes, %v", len(v), err)
				}
			}
		}()
	}
	wg.Wait()
	ran := f.Redis.CommandStats(t)["get"] - before
	st := f.Server.cache.Stats()
	t.Logf("500 GETs, upstream ran %d, joined %d", ran, st.Joins)
	if st.Joins == 0 || ran+int(st.Joins) != 500 {
		t.Fatalf("upstream ran %d GETs and %d joined, want 500 in all with some joined", ran, st.Joins)
	}
}

// TestReadOnlyScriptsLearned: a script funnel saw (EVAL, or SCRIPT LOAD)
// whose every call names a read-only command is cached without
// --cache-script; one that writes, or names its command at run time, is
// not.
func TestReadOnlyScriptsLearned(t *testing.T) {
	f := startFunnel(t, Options{CacheRules: []CacheRule{{Pattern: "s:*", TTL: 10 * time.Second}}}, pool.Options{})
	c := dialRaw(t, f.Addr)
	for _, k := range []string{"s:r", "s:w", "s:d", "s:l"} {
		c.do("SET", k, "v")
	}
	reads := "local rcall = redis.call\nreturn rcall('GET', KEYS[1])"
	writes := "redis.call('INCR', 'counter'); return redis.call('GET', KEYS[1])"
	dynamic := "local c = ARGV[1]; return redis.call(c, KEYS[1])"
	loaded := "return redis.call('STRLEN', KEYS[1])"
	sha := strings.Trim(strings.Split(c.do("SCRIPT", "LOAD", loaded), "\r\n")[1], " ")
	before := f.Redis.CommandStats(t)
	for range 5 {
		for _, cmd := range [][]string{
			{"EVAL", reads, "1", "s:r"}, {"EVAL", writes, "1", "s:w"}, {"EVAL", dynamic, "1", "s:d", "GET"}, {"EVALSHA", sha, "1", "s:l"},
		} {
			if got := c.do(cmd...); strings.HasPrefix(got, "-") {
				t.Fatalf("%v: %q", cmd[:1], got)
			}
		}
	}
	after := f.Redis.CommandStats(t)
	// The reading EVAL and EVALSHA went upstream once each; the other two
	// every time. (Scripts' own calls count in GET and STRLEN.)
	if n := after["eval"] - before["eval"]; n != 1+5+5 {
		t.Errorf("upstream ran EVAL %d times, want 11 (the reading script once, the others 5 times each)", n)
	}
	if n := after["evalsha"] - before["evalsha"]; n != 1 {
		t.Errorf("upstream ran EVALSHA of a loaded read-only script %d times, want 1", n)
	}
}

// TestTransactionWritesEndPending: every write of a transaction ends
// pending with the transaction's reply, however many keys it writes: after
// EXEC, each key's reads are cached again (a write whose end was lost
// would keep its key uncacheable, or end another's too early).
func TestTransactionWritesEndPending(t *testing.T) {
	f := startFunnel(t, Options{CacheRules: []CacheRule{{Pattern: "tx:*", TTL: time.Minute}}}, pool.Options{})
	c := dialRaw(t, f.Addr)
	c.do("MULTI")
	for i := range 10 {
		c.do("SET", fmt.Sprint("tx:", i), fmt.Sprint(i))
	}
	c.do("HSET", "tx:h", "f", "v")
	if got := c.do("EXEC"); !strings.HasPrefix(got, "*11\r\n") {
		t.Fatalf("EXEC: %q", got)
	}
	before := f.Redis.CommandStats(t)["get"]
	for range 2 {
		for i := range 10 {
			if got := c.do("GET", fmt.Sprint("tx:", i)); got != fmt.Sprintf("$1\r\n%d\r\n", i) {
				t.Fatalf("GET tx:%d: %q", i, got)
			}
		}
	}
	if n := f.Redis.CommandStats(t)["get"] - before; n != 10 {
		t.Errorf("upstream ran %d GETs for 10 keys read twice, want 10: some key stayed pending after EXEC", n)
	}
}
