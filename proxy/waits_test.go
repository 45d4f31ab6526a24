package proxy

import (
	"bufio"
	"context"
	"fmt"
	"math/rand"
	"net"
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

// TestSharedPopsExactlyOnce pushes N elements to K clients blocked in BLPOP
// or BZPOPMIN on one key, while clients come and go (some leave mid-wait,
// some time out, new ones arrive), and checks that every element is
// received exactly once, or is still in the list: none lost, none twice.
func TestSharedPopsExactlyOnce(t *testing.T) {
	for _, kind := range []string{"list", "zset"} {
		t.Run(kind, func(t *testing.T) {
			f := startFunnel(t, Options{ShareWaits: []string{"q:*"}}, pool.Options{MaxExclusive: 4})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			const n = 600
			key := "q:" + kind
			var mu sync.Mutex
			got := map[string]int{}
			var stop atomic.Bool
			var wg sync.WaitGroup
			record := func(reply string) {
				if parts := resp.FlatArray([]byte(reply)); len(parts) >= 2 {
					mu.Lock()
					got[string(parts[1])]++
					mu.Unlock()
				}
			}
			cmd := "BLPOP"
			if kind == "zset" {
				cmd = "BZPOPMIN"
			}
			for c := 0; c < 12; c++ {
				wg.Add(1)
				go func(c int) {
					defer wg.Done()
					rng := rand.New(rand.NewSource(int64(c)))
					for !stop.Load() {
						// A fresh client for a few pops, then it leaves; some
						// leave while blocked. A leaving client half-closes
						// and reads on, so an element funnel sent it before
						// it saw the departure is counted, not taken for lost.
						conn, err := net.DialTimeout("tcp", f.Addr, 2*time.Second)
						if err != nil {
							t.Error(err)
							return
						}
						// Not dialRaw: its send calls t.Fatal, which this
						// goroutine must not; tryReply returns errors.
						rc := &rawConn{t: t, conn: conn, rd: bufio.NewReader(conn)}
						send := func(args ...string) error {
							_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
							_, err := conn.Write(resp.AppendCommand(nil, toBytes(args)...))
							return err
						}
						for i := rng.Intn(5); i >= 0 && !stop.Load(); i-- {
							timeout := time.Duration(50+rng.Intn(300)) * time.Millisecond
							leave := rng.Intn(8) == 0
							if err := send(cmd, key, strconv.FormatFloat(timeout.Seconds(), 'f', 3, 64)); err != nil {
								break
							}
							if leave {
								time.Sleep(timeout / 2)
								_ = conn.(*net.TCPConn).CloseWrite()
								for {
									reply, err := rc.tryReply(5 * time.Second)
									if err != nil {
										break
									}
									record(reply)
								}
								break
							}
							reply, err := rc.tryReply(10 * time.Second)
							if err != nil {
								t.Errorf("%s: %v", cmd, err)
								break
							}
							record(reply)
						}
						conn.Close()
					}
				}(c)
			}
			pusher := f.client(t)
			for i := 0; i < n; i++ {
				el := fmt.Sprint("e", i)
				var err error
				if kind == "list" {
					err = pusher.RPush(ctx, key, el).Err()
				} else {
					err = pusher.ZAdd(ctx, key, redis.Z{Score: float64(i), Member: el}).Err()
				}
				if err != nil {
					t.Fatal(err)
				}
				if i%50 == 0 {
					time.Sleep(20 * time.Millisecond)
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				mu.Lock()
				done := len(got)
				mu.Unlock()
				if done == n {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			stop.Store(true)
			wg.Wait()
			// What is left in Redis counts as not received.
			var left []string
			if kind == "list" {
				left, _ = pusher.LRange(ctx, key, 0, -1).Result()
			} else {
				left, _ = pusher.ZRange(ctx, key, 0, -1).Result()
			}
			for _, el := range left {
				got[el] += 0
				if got[el] > 0 {
					t.Errorf("%s was received and is still in the %s", el, kind)
				}
			}
			missing, twice := 0, 0
			for i := 0; i < n; i++ {
				el := fmt.Sprint("e", i)
				c, ok := got[el]
				inRedis := false
				for _, l := range left {
					if l == el {
						inRedis = true
					}
				}
				switch {
				case c > 1:
					twice++
				case !ok && !inRedis, c == 0 && !inRedis:
					missing++
				}
			}
			stats := f.Redis.CommandStats(t)
			t.Logf("%d elements: %d received, %d left in Redis; upstream ran %v", n, len(got)-len(left), len(left), statsOf(stats, "blpop", "bzpopmin", "client|unblock", "lpush", "zadd"))
			if missing > 0 || twice > 0 {
				t.Fatalf("%d elements lost, %d received twice", missing, twice)
			}
		})
	}
}

func statsOf(stats map[string]int, names ...string) string {
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s=%d ", n, stats[n])
	}
	return b.String()
}

// TestSharedPopsHalveUpstreamPops: two idle clients blocked on one key cost
// the upstream one blocking pop per round, not two, and each still gets
// Redis's timeout reply at its own timeout.
func TestSharedPopsHalveUpstreamPops(t *testing.T) {
	f := startFunnel(t, Options{ShareWaits: []string{"bull:*"}}, pool.Options{})
	ctx := context.Background()
	a, b := f.client(t), f.client(t)
	a.Ping(ctx)
	b.Ping(ctx)
	before := f.Redis.CommandStats(t)["bzpopmin"]
	var wg sync.WaitGroup
	for _, c := range []*redis.Client{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				// go-redis sends whole seconds: 1 s is the least.
				start := time.Now()
				if _, err := c.BZPopMin(ctx, time.Second, "bull:q:marker").Result(); err != redis.Nil {
					t.Errorf("BZPOPMIN: %v, want the timeout reply", err)
				}
				if d := time.Since(start); d < time.Second || d > time.Second+timingSlack*400*time.Millisecond {
					t.Errorf("timed out after %v, want about 1s", d)
				}
			}
		}()
	}
	wg.Wait()
	if n := f.Redis.CommandStats(t)["bzpopmin"] - before; n > 4 {
		t.Errorf("upstream ran %d BZPOPMIN for 2 clients × 3 rounds, want about 3", n)
	}
}

// TestSharedXReadFansOut: identical XREAD BLOCK waits share one upstream
// XREAD, and every waiter gets the entry.
func TestSharedXReadFansOut(t *testing.T) {
	f := startFunnel(t, Options{ShareWaits: []string{"bull:*"}}, pool.Options{})
	ctx := context.Background()
	id, err := f.client(t).XAdd(ctx, &redis.XAddArgs{Stream: "bull:q:events", Values: []string{"event", "first"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	before := f.Redis.CommandStats(t)["xread"]
	var wg sync.WaitGroup
	var received atomic.Int32
	for range 5 {
		c := f.client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.XRead(ctx, &redis.XReadArgs{Streams: []string{"bull:q:events", id}, Block: 5 * time.Second}).Result()
			if err != nil || len(res) != 1 || len(res[0].Messages) != 1 || res[0].Messages[0].Values["event"] != "second" {
				t.Errorf("XREAD: %+v %v", res, err)
				return
			}
			received.Add(1)
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := f.client(t).XAdd(ctx, &redis.XAddArgs{Stream: "bull:q:events", Values: []string{"event", "second"}}).Err(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if n := f.Redis.CommandStats(t)["xread"] - before; received.Load() != 5 || n > 2 {
		t.Errorf("%d of 5 waiters got the entry; upstream ran XREAD %d times, want 1", received.Load(), n)
	}
}

// TestSharedPopDepartureRace races a waiter's departure against an
// element's arrival, many times: the last waiter of a shared pop hangs up
// (half-closing, so it still reads what funnel sent before closing) just as
// an element is pushed. Each element must end up either read by the waiter
// or back in the list: funnel unblocks the upstream pop it no longer needs
// and puts back an element that pop took.
func TestSharedPopDepartureRace(t *testing.T) {
	f := startFunnel(t, Options{ShareWaits: []string{"q:*"}}, pool.Options{})
	received, back := departureRace(t, f, 150, "q:race", 1, func() {
		waitUntil(t, 5*time.Second, "the waiter to block", func() bool { return f.Server.blockedClients.Load() == 1 })
	}, func() {
		waitUntil(t, 5*time.Second, "the waiter to be gone", func() bool { return f.Server.blockedClients.Load() == 0 })
	})
	stats := f.Redis.CommandStats(t)
	t.Logf("150 races: %d elements read by the waiter, %d left in or put back into the list; upstream ran %s", received, back, statsOf(stats, "blpop", "client|unblock", "lpush"))
	if stats["client|unblock"] == 0 {
		t.Error("no CLIENT UNBLOCK: the race never reached the early end of a shared pop")
	}
}

// TestSharedZPopLingers: idle workers that wait on a marker key and come
// straight back cost the upstream one BZPOPMIN per linger, not one per
// wait, and each wait still ends at its own timeout. Once no waiter comes
// for a whole round, the upstream pop ends.
func TestSharedZPopLingers(t *testing.T) {
	f := startFunnel(t, Options{ShareWaits: []string{"bull:*"}, WaitLinger: 3 * time.Second}, pool.Options{})
	before := f.Redis.CommandStats(t)["bzpopmin"]
	var wg sync.WaitGroup
	for range 2 {
		c := dialRaw(t, f.Addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				start := time.Now()
				if got := c.do("BZPOPMIN", "bull:q:marker", "0.3"); got != "*-1\r\n" {
					t.Errorf("BZPOPMIN: %q, want the timeout reply", got)
				}
				if d := time.Since(start); d < 300*time.Millisecond || d > 300*time.Millisecond+timingSlack*100*time.Millisecond {
					t.Errorf("timed out after %v, want 300ms", d)
				}
			}
		}()
	}
	wg.Wait()
	if n := f.Redis.CommandStats(t)["bzpopmin"] - before; n != 1 {
		t.Errorf("upstream ran %d BZPOPMIN for 2 clients × 5 waits of 0.3 s within one 3 s linger, want 1", n)
	}
	// The round in flight saw waiters come, so one more runs; in that one
	// nobody comes, and it is the last.
	// (CLIENT LIST's cmd= is a connection's last command, not its current
	// one: the upstream's blocked_clients says whether a pop still waits.)
	waitUntil(t, 10*time.Second, "the lingering pop to end", func() bool {
		info, _ := f.Redis.DoRaw("INFO", "clients")
		return strings.Contains(info, "blocked_clients:0\r\n")
	})
}

// TestLingeringPopPutsBack: an element that arrives while the pop lingers
// with no waiter is put back with its score, then popped by the next
// waiter: exactly once, never lost.
func TestLingeringPopPutsBack(t *testing.T) {
	f := startFunnel(t, Options{ShareWaits: []string{"q:*"}, WaitLinger: 5 * time.Second}, pool.Options{})
	c := dialRaw(t, f.Addr)
	if got := c.do("BZPOPMIN", "q:z", "0.1"); got != "*-1\r\n" {
		t.Fatalf("BZPOPMIN: %q", got)
	}
	f.Redis.Do("ZADD", "q:z", "7", "m")
	waitUntil(t, 5*time.Second, "m to be put back", func() bool {
		stats := f.Redis.CommandStats(t)
		score, _ := f.Redis.DoRaw("ZSCORE", "q:z", "m")
		return stats["zadd"] >= 2 && score == "$1\r\n7\r\n"
	})
	if got := c.do("BZPOPMIN", "q:z", "1"); got != "*3\r\n$3\r\nq:z\r\n$1\r\nm\r\n$1\r\n7\r\n" {
		t.Fatalf("the next waiter got %q, want m with score 7", got)
	}
	if n, _ := f.Redis.Do("ZCARD", "q:z"); n != ":0\r\n" {
		t.Fatalf("after the pop ZCARD is %q: m given twice", n)
	}
}

// TestPutBackIsPending: funnel's put-back of an element is a write the
// cache tracks like a client's: while it is on its way (held here by
// CLIENT PAUSE WRITE upstream), no read of its key fills the cache, so no
// reply from before it is served after it.
func TestPutBackIsPending(t *testing.T) {
	f := startFunnel(t, Options{CacheRules: []CacheRule{{Pattern: "q:*", TTL: time.Minute}}}, pool.Options{})
	if _, err := f.Redis.Do("CLIENT", "PAUSE", "2000", "WRITE"); err != nil {
		t.Fatal(err)
	}
	defer f.Redis.Do("CLIENT", "UNPAUSE")
	sw := &sharedWait{hub: f.Server.waits, key: waitKey{pool: f.Pool}, args: [][]byte{[]byte("BLPOP"), []byte("q:a"), []byte("1")}}
	sw.restore([]byte("*2\r\n$3\r\nq:a\r\n$1\r\nx\r\n"))
	c := f.Server.cache
	_, _, lead := c.Lookup(0, []byte("llen|q:a"), [][]byte{[]byte("q:a")}, time.Minute, time.Now(), nil)
	if lead == nil {
		t.Fatal("no flight to lead")
	}
	c.Finish(lead, []byte(":0\r\n"), nil)
	if hit, _, _ := c.Lookup(0, []byte("llen|q:a"), [][]byte{[]byte("q:a")}, time.Minute, time.Now(), nil); hit != nil {
		t.Fatalf("a read during the put-back filled the cache: %q", hit)
	}
	f.Redis.Do("CLIENT", "UNPAUSE")
	waitUntil(t, 5*time.Second, "the element to be back", func() bool {
		n, _ := f.Redis.Do("LLEN", "q:a")
		return n == ":1\r\n"
	})
}

// departureRace races, n times, a client's departure from a BLPOP on one of
// three keys (prefix 0-2) against an element pushed to that key: the
// client half-closes, so it still reads what funnel wrote before it saw the
// departure. Each element must end up read by the client or in the list,
// never both and never neither. blocked waits until the BLPOP waits
// upstream; gone until funnel is done with the departure. It returns how
// many elements the client read and how many stayed in or went back into
// the list.
func departureRace(t *testing.T, f *funnel, n int, prefix string, seed int64, blocked, gone func()) (received, back int) {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < n; i++ {
		key, el := fmt.Sprint(prefix, i%3), fmt.Sprint("e", i)
		w := dialRaw(t, f.Addr)
		w.send("BLPOP", key, "5")
		blocked()
		time.Sleep(time.Duration(1+rng.Intn(2)) * time.Millisecond) // the BLPOP reaches Redis
		pushDelay := time.Duration(rng.Intn(2000)) * time.Microsecond
		go func() {
			time.Sleep(pushDelay)
			f.Redis.Do("RPUSH", key, el)
		}()
		time.Sleep(time.Duration(rng.Intn(2000)) * time.Microsecond)
		w.conn.(interface{ CloseWrite() error }).CloseWrite()
		reply, _ := w.tryReply(5 * time.Second)
		got := strings.Contains(reply, el)
		gone()
		// Whatever funnel still does with the element is done once the
		// client is gone and the pop ended; give it a moment.
		var inList bool
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			lst, _ := f.Redis.Do("LPOS", key, el)
			if inList = strings.HasPrefix(lst, ":"); inList || got {
				break
			}
		}
		switch {
		case got && inList:
			t.Fatalf("element %d read by the client and still in the list: given twice", i)
		case !got && !inList:
			t.Fatalf("element %d lost: not read by the client, not in the list", i)
		case got:
			received++
		default:
			back++
		}
		f.Redis.Do("DEL", key)
	}
	return received, back
}
