package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

func TestTransactionRepliesMatchDirect(t *testing.T) {
	direct := redistest.Start(t)
	f := startFunnel(t, Options{}, pool.Options{})
	dc, fc := dialRaw(t, direct.Addr), dialRaw(t, f.Addr)
	script := [][]string{
		{"MULTI"}, {"SET", "a", "1"}, {"INCR", "a"}, {"LPUSH", "a", "x"}, {"GET", "a"}, {"EXEC"},
		{"EXEC"}, {"DISCARD"},
		{"MULTI"}, {"MULTI"}, {"SET", "b", "2"}, {"EXEC"},
		{"MULTI"}, {"NOSUCHCMD", "x", "y"}, {"SET", "c", "3"}, {"EXEC"}, {"GET", "c"},
		{"MULTI"}, {"GET"}, {"EXEC"},
		{"MULTI"}, {"SET", "d", "4"}, {"DISCARD"}, {"GET", "d"},
		{"MULTI"}, {"WATCH", "a"}, {"PING"}, {"ECHO", "e"}, {"EXEC"},
		{"MULTI"}, {"EXEC"},
		{"UNWATCH"},
	}
	for _, cmd := range script {
		want, got := dc.do(cmd...), fc.do(cmd...)
		if got != want {
			t.Errorf("%v: funnel %q, direct %q", cmd, short(got), short(want))
		}
	}
}

func TestWatchConflict(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{MaxExclusive: 2})
	a, b := dialRaw(t, f.Addr), dialRaw(t, f.Addr)
	a.do("SET", "k", "0")
	for _, step := range []struct {
		c    *rawConn
		cmd  []string
		want string
	}{
		{a, []string{"WATCH", "k"}, "+OK\r\n"},
		{b, []string{"SET", "k", "changed"}, "+OK\r\n"},
		{a, []string{"MULTI"}, "+OK\r\n"},
		{a, []string{"SET", "k", "mine"}, "+QUEUED\r\n"},
		{a, []string{"EXEC"}, "*-1\r\n"},
		{a, []string{"GET", "k"}, "$7\r\nchanged\r\n"},
		// Without interference the transaction runs.
		{a, []string{"WATCH", "k"}, "+OK\r\n"},
		{a, []string{"MULTI"}, "+OK\r\n"},
		{a, []string{"SET", "k", "mine"}, "+QUEUED\r\n"},
		{a, []string{"EXEC"}, "*1\r\n+OK\r\n"},
		// UNWATCH, DISCARD and RESET end the span too.
		{a, []string{"WATCH", "k"}, "+OK\r\n"},
		{a, []string{"UNWATCH"}, "+OK\r\n"},
		{a, []string{"WATCH", "k"}, "+OK\r\n"},
		{a, []string{"MULTI"}, "+OK\r\n"},
		{a, []string{"DISCARD"}, "+OK\r\n"},
		{a, []string{"WATCH", "k"}, "+OK\r\n"},
		{a, []string{"RESET"}, "+RESET\r\n"},
		{b, []string{"SET", "k", "again"}, "+OK\r\n"},
		{a, []string{"MULTI"}, "+OK\r\n"},
		{a, []string{"SET", "k", "after-reset"}, "+QUEUED\r\n"},
		{a, []string{"EXEC"}, "*1\r\n+OK\r\n"},
	} {
		if got := step.c.do(step.cmd...); got != step.want {
			t.Fatalf("%v: got %q, want %q", step.cmd, got, step.want)
		}
	}
	waitLaneIdle(t, f)
}

// waitLaneIdle waits until no exclusive connection is lent out.
func waitLaneIdle(t *testing.T, f *funnel) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		inUse, _, waiting := f.Pool.Lane().Stats()
		if inUse == 0 && waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("exclusive lane: %d in use, %d waiting", inUse, waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGoRedisWatchHelper uses go-redis's optimistic-locking helper, which
// retries on conflict, from many clients at once: the counter must count
// every increment exactly once.
func TestGoRedisWatchHelper(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{MaxExclusive: 4})
	ctx := context.Background()
	const clients, each = 10, 20
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
			defer rdb.Close()
			for i := 0; i < each; i++ {
				for {
					err := rdb.Watch(ctx, func(tx *redis.Tx) error {
						n, err := tx.Get(ctx, "counter").Int()
						if err != nil && !errors.Is(err, redis.Nil) {
							return err
						}
						_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
							p.Set(ctx, "counter", n+1, 0)
							return nil
						})
						return err
					}, "counter")
					if err == nil {
						break
					}
					if !errors.Is(err, redis.TxFailedErr) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if n, err := f.client(t).Get(ctx, "counter").Int(); err != nil || n != clients*each {
		t.Fatalf("counter = %d, %v; want %d", n, err, clients*each)
	}
	waitLaneIdle(t, f)
}

// TestTransactionsAreAtomic runs 100 clients doing MULTI INCR x ×3 EXEC while
// others INCR x outside transactions: each transaction's three results must
// be consecutive, so nothing foreign ran inside it.
func TestTransactionsAreAtomic(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 4})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var hammer sync.WaitGroup
	for h := 0; h < 20; h++ {
		hammer.Add(1)
		go func() {
			defer hammer.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
			defer rdb.Close()
			for ctx.Err() == nil {
				pipe := rdb.Pipeline()
				for i := 0; i < 10; i++ {
					pipe.Incr(ctx, "x")
				}
				_, _ = pipe.Exec(ctx)
			}
		}()
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for c := 0; c < 100; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1})
			defer rdb.Close()
			for i := 0; i < 20; i++ {
				var incrs [3]*redis.IntCmd
				_, err := rdb.TxPipelined(context.Background(), func(p redis.Pipeliner) error {
					for j := range incrs {
						incrs[j] = p.Incr(context.Background(), "x")
					}
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
				if incrs[1].Val() != incrs[0].Val()+1 || incrs[2].Val() != incrs[1].Val()+1 {
					errs <- fmt.Errorf("transaction not atomic: %d %d %d", incrs[0].Val(), incrs[1].Val(), incrs[2].Val())
					return
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	hammer.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestTransactionSizeBound(t *testing.T) {
	f := startFunnel(t, Options{MaxMultiBytes: 1024}, pool.Options{})
	c := dialRaw(t, f.Addr)
	c.do("MULTI")
	if got := c.do("SET", "k", strings.Repeat("x", 2000)); got != "-ERR funnel: transaction larger than 1024 bytes (--max-multi-bytes); it will be discarded\r\n" {
		t.Fatalf("oversized queue: %q", got)
	}
	if got := c.do("EXEC"); got != "-EXECABORT Transaction discarded because of previous errors.\r\n" {
		t.Fatalf("EXEC: %q", got)
	}
	if got := c.do("GET", "k"); got != "$-1\r\n" {
		t.Fatalf("GET: %q", got)
	}
}

// TestExclusiveIdleTimeout checks that a returned exclusive connection is
// reused while warm and closed once idle past the timeout.
func TestExclusiveIdleTimeout(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{ExclusiveIdle: 200 * time.Millisecond})
	c := dialRaw(t, f.Addr)
	c.do("BLPOP", "q", "0.01")
	c.do("BLPOP", "q", "0.01")
	if dials := testutil.ToFloat64(f.Metrics.UpstreamDials.WithLabelValues("ok")); dials != 1 {
		t.Fatalf("%v dials for two BLPOPs, want 1 (the exclusive connection is reused)", dials)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, idle, _ := f.Pool.Lane().Stats(); idle == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle exclusive connection never closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(f.Metrics.UpstreamConns.WithLabelValues("exclusive")); got != 0 {
		t.Fatalf("%v exclusive connections open after the idle timeout", got)
	}
}
