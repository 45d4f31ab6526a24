package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/redis/go-redis/v9"
)

// TestOrderingUnderLoad has 200 clients pipeline 1,000 mixed commands each
// on overlapping keys through a pool of 10. Each client must read its own
// writes, get every reply for its own request, and keep its RPUSH order; the
// shared counter must hand out every number exactly once.
func TestOrderingUnderLoad(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 10})
	const clients, perClient = 200, 1000
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	seen := make([][]int64, clients)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1, ReadTimeout: 30 * time.Second})
			defer rdb.Close()
			pipe := rdb.Pipeline()
			type check struct {
				get  *redis.StringCmd
				want string
				push *redis.IntCmd
				n    int64
			}
			var checks []check
			var incrs []*redis.IntCmd
			own := fmt.Sprintf("own:%d", c)
			var pushes int64
			for i := 0; i < perClient/4; i++ {
				v := fmt.Sprintf("%d-%d", c, i)
				pipe.Set(ctx, own, v, 0)
				checks = append(checks, check{get: pipe.Get(ctx, own), want: v})
				incrs = append(incrs, pipe.Incr(ctx, "shared:counter"))
				pushes++
				checks = append(checks, check{push: pipe.RPush(ctx, "shared:list", fmt.Sprintf("%d:%d", c, i)), n: pushes})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				errs <- fmt.Errorf("client %d: %w", c, err)
				return
			}
			for i, ch := range checks {
				if ch.get != nil && ch.get.Val() != ch.want {
					errs <- fmt.Errorf("client %d check %d: GET gave %q, want %q", c, i, ch.get.Val(), ch.want)
					return
				}
				if ch.push != nil && ch.push.Val() < ch.n {
					errs <- fmt.Errorf("client %d: RPUSH returned %d after %d own pushes", c, ch.push.Val(), ch.n)
					return
				}
			}
			for _, in := range incrs {
				seen[c] = append(seen[c], in.Val())
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := clients * perClient / 4
	got := make(map[int64]bool, total)
	for c, vals := range seen {
		for i, v := range vals {
			if got[v] {
				t.Fatalf("INCR value %d handed out twice", v)
			}
			got[v] = true
			if i > 0 && v <= vals[i-1] {
				t.Fatalf("client %d: INCR replies out of order: %d after %d", c, v, vals[i-1])
			}
		}
	}
	if len(got) != total {
		t.Fatalf("%d distinct INCR values, want %d", len(got), total)
	}
	// Each client's pushes appear in the shared list in the order it sent them.
	rdb := f.client(t)
	list, err := rdb.LRange(ctx, "shared:list", 0, -1).Result()
	if err != nil || len(list) != total {
		t.Fatalf("list: %d items, %v", len(list), err)
	}
	next := make([]int, clients)
	for _, item := range list {
		cs, is, _ := strings.Cut(item, ":")
		c, _ := strconv.Atoi(cs)
		i, _ := strconv.Atoi(is)
		if i != next[c] {
			t.Fatalf("client %d: push %d came where %d was due", c, i, next[c])
		}
		next[c]++
	}
}

// TestUpstreamConnectionsCapped keeps 1,000 clients connected and busy and
// checks from the upstream's own CLIENT LIST that funnel never holds more
// than --pool-size connections.
func TestUpstreamConnectionsCapped(t *testing.T) {
	const size = 4
	f := startFunnel(t, Options{}, pool.Options{Size: size})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var clients []*redis.Client
	for i := 0; i < 1000; i++ {
		c := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1, MinIdleConns: 1})
		clients = append(clients, c)
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i, c := range clients {
		wg.Add(1)
		go func(i int, c *redis.Client) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := c.Set(ctx, fmt.Sprintf("k%d", i), n, 0).Err(); err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
			}
		}(i, c)
	}
	direct := redis.NewClient(&redis.Options{Addr: f.Redis.Addr})
	defer direct.Close()
	maxSeen := 0
	for round := 0; round < 20; round++ {
		time.Sleep(50 * time.Millisecond)
		list, err := direct.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := strings.Count(list, "\n") - 1 // less this CLIENT LIST connection
		maxSeen = max(maxSeen, n)
	}
	close(stop)
	wg.Wait()
	if got := f.Server.sessionCount(); got != 1000 {
		t.Fatalf("funnel had %d clients, want 1000", got)
	}
	if maxSeen > size || maxSeen == 0 {
		t.Fatalf("upstream saw up to %d funnel connections, pool size %d", maxSeen, size)
	}
	t.Logf("upstream saw at most %d connections for 1000 clients", maxSeen)
}

// TestSlowReaderGetsEveryReplyInOrder: a client pipelines far more replies
// than its socket buffers hold and reads nothing for a while, so funnel's
// output stalls and its writer goroutine takes over; once the client reads,
// every reply comes, in order, with local replies, cache-sized and large
// replies mixed in.
func TestSlowReaderGetsEveryReplyInOrder(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	c := dialRaw(t, f.Addr)
	c.do("SET", "v", strings.Repeat("x", 4<<10))
	c.do("SET", "big", strings.Repeat("y", 1<<20))
	const n = 3000
	var want []string
	var batch []byte
	for i := 0; i < n; i++ {
		var args []string
		switch i % 100 {
		case 0:
			args = []string{"GET", "big"}
			want = append(want, fmt.Sprintf("$%d\r\n%s\r\n", 1<<20, strings.Repeat("y", 1<<20)))
		case 1:
			args = []string{"PING", strconv.Itoa(i)}
			want = append(want, fmt.Sprintf("$%d\r\n%d\r\n", len(strconv.Itoa(i)), i))
		default:
			args = []string{"GET", "v"}
			want = append(want, fmt.Sprintf("$%d\r\n%s\r\n", 4<<10, strings.Repeat("x", 4<<10)))
		}
		var bargs [][]byte
		for _, a := range args {
			bargs = append(bargs, []byte(a))
		}
		batch = resp.AppendCommand(batch, bargs...)
	}
	// Write from another goroutine: the requests alone fill the socket
	// buffers while nothing is read.
	go func() { _, _ = c.conn.Write(batch) }()
	time.Sleep(500 * time.Millisecond)
	for i, w := range want {
		if got := c.reply(); got != w {
			t.Fatalf("reply %d: got %q, want %q", i, short(got), short(w))
		}
	}
}
