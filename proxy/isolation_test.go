package proxy

// Regression tests for issue 8 (isolation): one per defect listed there.
// Each names its defect number. Data and crashes (1, 2, 3, 11) are here;
// the protocol cases (4, 5) are in badrequest_test.go; resources and
// operations (6-10) in resources_test.go; the divergences from Redis (12)
// in divergence_test.go; and the tests that need options not built yet in
// isolation_future_test.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/redis/go-redis/v9"
)

// waitUntil polls cond every 10 ms and fails the test, saying what it
// waited for, if cond does not hold within d.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopSignal returns a channel that halt closes, or the test's end at the
// latest, so goroutines waiting on it never outlive the test.
func stopSignal(t testing.TB) (stop <-chan struct{}, halt func()) {
	ch := make(chan struct{})
	var once sync.Once
	halt = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(halt)
	return ch, halt
}

// tryDo sends args and reads the reply within timeout. Unlike do it never
// fails the test, so goroutines other than the test's may call it.
func (c *rawConn) tryDo(timeout time.Duration, args ...string) (string, error) {
	var bargs [][]byte
	for _, a := range args {
		bargs = append(bargs, []byte(a))
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.conn.Write(resp.AppendCommand(nil, bargs...)); err != nil {
		return "", err
	}
	return c.tryReply(timeout)
}

// infoField reads one field of INFO section from c (funnel or a
// redis-server), or "(missing)".
func infoField(t testing.TB, c *rawConn, section, field string) string {
	t.Helper()
	reply := c.do("INFO", section)
	for _, line := range strings.Split(reply, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v
		}
	}
	return "(missing)"
}

// waitBlocked waits until the redis-server behind f has n clients blocked.
func waitBlocked(t testing.TB, f *funnel, n int) {
	t.Helper()
	direct := dialRaw(t, f.Redis.Addr)
	want := strconv.Itoa(n)
	waitUntil(t, 5*time.Second, "blocked_clients:"+want+" upstream", func() bool {
		return infoField(t, direct, "clients", "blocked_clients") == want
	})
}

// replyShape names the shape of a raw reply: an error's code ("-ERR",
// "-WRONGTYPE"), else its type byte.
func replyShape(reply string) string {
	if strings.HasPrefix(reply, "-") {
		code, _, _ := strings.Cut(strings.TrimSuffix(reply, "\r\n"), " ")
		return code
	}
	if reply == "" {
		return ""
	}
	return reply[:1]
}

// TestBlockingCommandsWithBadArguments (defect 1) sends every blocking
// command with each prefix of a valid argument list, and with each argument
// of that prefix replaced by junk: funnel answers every one with the kind of
// reply Redis gives directly, and stays up for everyone. Today BZMPOP (and
// BLMPOP, WAIT) with too few arguments panic the whole process in
// blockingTimeout.
func TestBlockingCommandsWithBadArguments(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	bystander := dialRaw(t, f.Addr)
	bystander.do("SET", "k", "v")
	templates := [][]string{
		{"BLPOP", "q", "0.01"},
		{"BRPOP", "q", "0.01"},
		{"BRPOPLPUSH", "a", "b", "0.01"},
		{"BLMOVE", "a", "b", "LEFT", "RIGHT", "0.01"},
		{"BLMPOP", "0.01", "1", "q", "LEFT", "COUNT", "1"},
		{"BZPOPMIN", "z", "0.01"},
		{"BZPOPMAX", "z", "0.01"},
		{"BZMPOP", "0.01", "1", "z", "MIN", "COUNT", "1"},
		{"XREAD", "BLOCK", "10", "STREAMS", "s", "$"},
		{"XREADGROUP", "GROUP", "g", "c", "BLOCK", "10", "STREAMS", "s", ">"},
		{"WAIT", "0", "10"},
		{"WAITAOF", "0", "0", "10"},
	}
	junk := []string{"-1", "x", "nan", "inf", "1e400", ""}
	var cases [][]string
	for _, tpl := range templates {
		name, args := tpl[0], tpl[1:]
		for k := 0; k <= len(args); k++ {
			cases = append(cases, append([]string{name}, args[:k]...))
			for i := 0; i < k; i++ {
				for _, j := range junk {
					c := append([]string{name}, args[:k]...)
					c[1+i] = j
					cases = append(cases, c)
				}
			}
		}
	}
	cases = append(cases,
		[]string{"XREAD", "BLOCK", "10", "COUNT", "1"},
		[]string{"XREAD", "COUNT", "1", "BLOCK"},
		[]string{"XREADGROUP", "BLOCK", "10", "STREAMS", "s", ">"},
		[]string{"BZMPOP", "0.01", "2", "z"},
		[]string{"BLMPOP", "0.01", "99", "q", "LEFT"},
	)
	// Several workers: about a tenth of the cases really block for their
	// 10 ms, which Redis ends on its next tick.
	const workers = 8
	work := make(chan []string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var problems []string
	for w := 0; w < workers; w++ {
		direct, via := dialRaw(t, f.Redis.Addr), dialRaw(t, f.Addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cmd := range work {
				want, err := direct.tryDo(5*time.Second, cmd...)
				if err != nil {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("%q: direct: %v", cmd, err))
					mu.Unlock()
					continue
				}
				got, err := via.tryDo(5*time.Second, cmd...)
				if err != nil || replyShape(got) != replyShape(want) {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("%q: funnel %q (%v), direct %q", cmd, short(got), err, short(want)))
					mu.Unlock()
				}
				if err != nil {
					return // the connection is gone; the rest would fail too
				}
			}
		}()
	}
	for _, c := range cases {
		work <- c
	}
	close(work)
	wg.Wait()
	for i, p := range problems {
		if i == 20 {
			t.Errorf("... and %d more", len(problems)-20)
			break
		}
		t.Error(p)
	}
	if got := bystander.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("bystander PING: %q", got)
	}
	if got := bystander.do("GET", "k"); got != "$1\r\nv\r\n" {
		t.Fatalf("bystander GET: %q", got)
	}
	if got := dialRaw(t, f.Addr).do("PING"); got != "+PONG\r\n" {
		t.Fatalf("new client PING: %q", got)
	}
	t.Logf("%d blocking commands with bad arguments", len(cases))
}

// TestDepartedLaneWaiterRunsNothing (defect 2): a client that leaves while
// its BLPOP waits for a full exclusive lane must not pop anything later.
// Today its BLPOP still runs, inside MULTI, when its timeout passes, and the
// job pushed meanwhile is popped for nobody.
func TestDepartedLaneWaiterRunsNothing(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{MaxExclusive: 1})
	holder := dialRaw(t, f.Addr)
	holder.send("BLPOP", "other", "10")
	waitUntil(t, 5*time.Second, "the holder to take the lane", func() bool {
		inUse, _, _ := f.Pool.Lane().Stats()
		return inUse == 1
	})
	leaver := dialRaw(t, f.Addr)
	leaver.send("BLPOP", "q", "2")
	start := time.Now()
	waitUntil(t, 5*time.Second, "the second BLPOP to wait for the lane", func() bool {
		_, _, waiting := f.Pool.Lane().Stats()
		return waiting == 1
	})
	leaver.conn.Close()
	pusher := dialRaw(t, f.Addr)
	if got := pusher.do("LPUSH", "q", "job"); got != ":1\r\n" {
		t.Fatalf("LPUSH: %q", got)
	}
	// Past the departed client's timeout, and then some: the job is still
	// there, as it would be with Redis directly.
	for time.Since(start) < 2*time.Second+timingSlack*300*time.Millisecond {
		if got, err := f.Redis.Do("LLEN", "q"); err != nil || got != ":1\r\n" {
			t.Fatalf("%v after the departed BLPOP q 2 was sent: LLEN q %q %v, want :1 (the job was popped for nobody)",
				time.Since(start).Round(time.Millisecond), got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := pusher.do("LLEN", "q"); got != ":1\r\n" {
		t.Fatalf("LLEN q through funnel: %q", got)
	}
	pusher.do("LPUSH", "other", "x")
	if got := holder.reply(); got != "*2\r\n$5\r\nother\r\n$1\r\nx\r\n" {
		t.Fatalf("holder: %q", got)
	}
}

// TestReadYourWritesUnderLoad (defect 3): 20 writers each own a key and do
// SET k n, then GET k, which must read n; 50 readers read the same keys,
// and each reader's reads of one key never go back in time. Today a write
// invalidates its key once, before it is sent, so a read that overtakes it
// upstream is shared with, or cached for, the writer's next GET.
func TestReadYourWritesUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"defaults", Options{}},
		{"cache", Options{CacheRules: []CacheRule{{Pattern: "rk:*", TTL: 2 * time.Second}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFunnel(t, tc.opts, pool.Options{})
			const writers, readers, readDepth = 20, 50, 8
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var writes, reads, ryw, monotonic, failed atomic.Int64
			var mu sync.Mutex
			var examples []string
			note := func(s string) {
				mu.Lock()
				if len(examples) < 5 {
					examples = append(examples, s)
				}
				mu.Unlock()
			}
			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1, MaxRetries: -1})
					defer rdb.Close()
					key := fmt.Sprint("rk:", w)
					for n := int64(1); ctx.Err() == nil; n++ {
						if err := rdb.Set(ctx, key, n, 0).Err(); err != nil {
							if ctx.Err() == nil {
								failed.Add(1)
								note(fmt.Sprintf("writer %d: SET: %v", w, err))
							}
							return
						}
						writes.Add(1)
						got, err := rdb.Get(ctx, key).Int64()
						if err != nil {
							if ctx.Err() == nil {
								failed.Add(1)
								note(fmt.Sprintf("writer %d: GET: %v", w, err))
							}
							return
						}
						if got != n {
							ryw.Add(1)
							note(fmt.Sprintf("writer %d: SET %s %d answered +OK, then GET read %d", w, key, n, got))
						}
					}
				}(w)
			}
			for r := 0; r < readers; r++ {
				wg.Add(1)
				go func(r int) {
					defer wg.Done()
					rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1, MaxRetries: -1})
					defer rdb.Close()
					rng := rand.New(rand.NewSource(int64(r)))
					seen := make([]int64, writers)
					for ctx.Err() == nil {
						// Pipelined, so the load spreads over several
						// upstream connections, where reads and writes race.
						pipe := rdb.Pipeline()
						var keys []int
						var gets []*redis.StringCmd
						for i := 0; i < readDepth; i++ {
							k := rng.Intn(writers)
							keys = append(keys, k)
							gets = append(gets, pipe.Get(ctx, fmt.Sprint("rk:", k)))
						}
						if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
							if ctx.Err() == nil {
								failed.Add(1)
								note(fmt.Sprintf("reader %d: %v", r, err))
							}
							return
						}
						for i, k := range keys {
							got, _ := gets[i].Int64()
							reads.Add(1)
							if got < seen[k] {
								monotonic.Add(1)
								note(fmt.Sprintf("reader %d: rk:%d read %d after %d", r, k, got, seen[k]))
							}
							seen[k] = max(seen[k], got)
						}
					}
				}(r)
			}
			wg.Wait()
			t.Logf("%d writes, %d reads; cache %+v", writes.Load(), reads.Load(), f.Server.cache.Stats())
			for _, e := range examples {
				t.Log(e)
			}
			if n := failed.Load(); n > 0 {
				t.Errorf("%d clients stopped on an error", n)
			}
			if ryw.Load() > 0 || monotonic.Load() > 0 {
				t.Errorf("%d read-your-writes and %d monotonic-read anomalies in %d writes and %d reads, want 0",
					ryw.Load(), monotonic.Load(), writes.Load(), reads.Load())
			}
			if writes.Load() < 200 {
				t.Errorf("only %d writes: too little traffic to judge", writes.Load())
			}
		})
	}
}

// TestCacheHonoursKeyExpiry (defect 11): a key written through funnel with
// an expiry is never served from the cache once it has expired, whatever
// command set the expiry. Today the cached reply lives for the rule's TTL.
// Expiries are 300 ms or more (whole seconds for EXAT and EXPIREAT, 1 to
// 2 s ahead), so the GET that fills the cache comes before them.
func TestCacheHonoursKeyExpiry(t *testing.T) {
	f := startFunnel(t, Options{CacheRules: []CacheRule{{Pattern: "k:*", TTL: 10 * time.Second}}}, pool.Options{})
	at := func(d time.Duration, unit time.Duration) string {
		return strconv.FormatInt(time.Now().Add(d).UnixNano()/int64(unit), 10)
	}
	for _, tc := range []struct {
		name  string
		setup func(k string) [][]string
	}{
		{"SET PX", func(k string) [][]string { return [][]string{{"SET", k, "v", "PX", "300"}} }},
		{"SET EX", func(k string) [][]string { return [][]string{{"SET", k, "v", "EX", "1"}} }},
		{"SET PXAT", func(k string) [][]string {
			return [][]string{{"SET", k, "v", "PXAT", at(300*time.Millisecond, time.Millisecond)}}
		}},
		{"SET EXAT", func(k string) [][]string { return [][]string{{"SET", k, "v", "EXAT", at(2*time.Second, time.Second)}} }},
		{"SET GET PX", func(k string) [][]string { return [][]string{{"SET", k, "old"}, {"SET", k, "v", "GET", "PX", "300"}} }},
		{"SETEX", func(k string) [][]string { return [][]string{{"SETEX", k, "1", "v"}} }},
		{"PSETEX", func(k string) [][]string { return [][]string{{"PSETEX", k, "300", "v"}} }},
		{"EXPIRE", func(k string) [][]string { return [][]string{{"SET", k, "v"}, {"EXPIRE", k, "1"}} }},
		{"PEXPIRE", func(k string) [][]string { return [][]string{{"SET", k, "v"}, {"PEXPIRE", k, "300"}} }},
		{"EXPIREAT", func(k string) [][]string {
			return [][]string{{"SET", k, "v"}, {"EXPIREAT", k, at(2*time.Second, time.Second)}}
		}},
		{"PEXPIREAT", func(k string) [][]string {
			return [][]string{{"SET", k, "v"}, {"PEXPIREAT", k, at(300*time.Millisecond, time.Millisecond)}}
		}},
		{"GETEX EX", func(k string) [][]string { return [][]string{{"SET", k, "v"}, {"GETEX", k, "EX", "1"}} }},
		{"GETEX PX", func(k string) [][]string { return [][]string{{"SET", k, "v"}, {"GETEX", k, "PX", "300"}} }},
		{"GETEX PXAT", func(k string) [][]string {
			return [][]string{{"SET", k, "v"}, {"GETEX", k, "PXAT", at(300*time.Millisecond, time.Millisecond)}}
		}},
		{"MULTI SET PX", func(k string) [][]string {
			return [][]string{{"MULTI"}, {"SET", k, "v", "PX", "300"}, {"EXEC"}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := "k:" + strings.ReplaceAll(tc.name, " ", "-")
			c := dialRaw(t, f.Addr)
			for _, cmd := range tc.setup(k) {
				if got := c.do(cmd...); strings.HasPrefix(got, "-") {
					t.Fatalf("%v: %q", cmd, got)
				}
			}
			if got := c.do("GET", k); got != "$1\r\nv\r\n" {
				t.Fatalf("GET before the expiry: %q", got) // fills the cache
			}
			direct := dialRaw(t, f.Redis.Addr)
			waitUntil(t, 3*time.Second, k+" to expire upstream", func() bool {
				return direct.do("EXISTS", k) == ":0\r\n"
			})
			if got := c.do("GET", k); got != "$-1\r\n" {
				t.Errorf("GET %s after it expired upstream: %q, want nil as Redis says", k, got)
			}
		})
	}
}

// readUntil reads from c until what it has read ends with sentinel, or the
// connection ends, or timeout passes. closed reports an ended connection.
func readUntil(c *rawConn, sentinel string, timeout time.Duration) (out string, closed bool) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var b []byte
	chunk := make([]byte, 64<<10)
	for sentinel == "" || !strings.HasSuffix(string(b), sentinel) {
		n, err := c.rd.Read(chunk)
		b = append(b, chunk[:n]...)
		if err != nil {
			var ne interface{ Timeout() bool }
			timedOut := errors.As(err, &ne) && ne.Timeout()
			return string(b), !timedOut && (errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset"))
		}
	}
	return string(b), false
}
