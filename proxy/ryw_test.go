package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/redis/go-redis/v9"
)

// TestReadYourWrites checks read-your-writes and monotonic reads through
// funnel. Writers each own keys and write increasing counters to them: SET k
// n, then GET k must return exactly n (also when pipelined as SET+GET).
// Readers read every key: per reader and key a value never goes back, and no
// read returns less than a write acknowledged before the read was sent. Both
// hold for a single Redis, whatever connection each command uses.
//
// It runs a matrix of configurations: coalescing only (the default), a 2 s
// cache rule on the keys, RESP2 and RESP3 clients, and a pool of 4 upstream
// connections; each for 1.5 s. For a long run, give each configuration an
// operation count or a duration:
//
//	FUNNEL_RYW_OPS=1000000 go test -race -run 'TestReadYourWrites$' -timeout 0 -v ./proxy/
//	FUNNEL_RYW_TIME=2m go test -race -run 'TestReadYourWrites$/cache' -timeout 0 -v ./proxy/
//
// FUNNEL_FUZZ_SEED repeats a run's random choices (not its interleavings).
func TestReadYourWrites(t *testing.T) {
	seed := fuzzSeed(t)
	cache := []CacheRule{{Pattern: "ryw:*", TTL: 2 * time.Second}}
	for _, c := range []struct {
		name  string
		opts  Options
		popts pool.Options
		proto int
	}{
		{"default-resp2", Options{}, pool.Options{}, 2},
		{"default-resp3", Options{}, pool.Options{}, 3},
		{"cache-resp2", Options{CacheRules: cache}, pool.Options{}, 2},
		{"cache-resp3", Options{CacheRules: cache}, pool.Options{}, 3},
		{"pool4-resp2", Options{}, pool.Options{Size: 4}, 2},
		{"pool4-cache-resp2", Options{CacheRules: cache}, pool.Options{Size: 4}, 2},
		{"pool4-cache-resp3", Options{CacheRules: cache}, pool.Options{Size: 4}, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFunnel(t, c.opts, c.popts)
			res := runRYW(t, f.Addr, c.proto, seed, nil)
			t.Logf("upstream connections at the end: %d", upstreamClients(t, f.Redis.Addr))
			res.report(t)
			if res.total() > 0 {
				t.Errorf("%d anomalies in %d operations", res.total(), res.ops.Load())
			}
		})
	}
}

// TestReadYourWritesSelfCheck checks the checker: against Redis directly it
// must find nothing, and when a hook makes some GETs return a value the key
// held earlier, as a stale cache would, it must find both kinds of anomaly.
func TestReadYourWritesSelfCheck(t *testing.T) {
	seed := fuzzSeed(t)
	rs := redistest.Start(t)
	t.Run("direct", func(t *testing.T) {
		res := runRYW(t, rs.Addr, 2, seed, nil)
		res.report(t)
		if res.total() > 0 {
			t.Errorf("%d anomalies against Redis itself", res.total())
		}
	})
	t.Run("stale-injected", func(t *testing.T) {
		res := runRYW(t, rs.Addr, 3, seed, &staleHook{seen: map[string][]string{}, r: newRand(seed, 99)})
		res.report(t)
		if res.ryw.Load() == 0 || res.monotonic.Load()+res.stale.Load() == 0 {
			t.Errorf("stale replies injected, but the checker found ryw %d, monotonic %d, stale %d",
				res.ryw.Load(), res.monotonic.Load(), res.stale.Load())
		}
	})
}

const (
	rywWriters     = 16
	rywKeysPerW    = 2
	rywReaders     = 32
	rywDefaultTime = 1500 * time.Millisecond
	rywMaxErrors   = 1000
)

func rywKey(w, k int) string { return fmt.Sprintf("ryw:w%d:%d", w, k) }

// rywResult counts operations and anomalies, with a few examples of each.
type rywResult struct {
	ops                               atomic.Int64
	ryw, monotonic, stale, impossible atomic.Int64
	errors                            atomic.Int64 // commands that failed (not checked)
	mu                                sync.Mutex
	examples                          map[string][]string
	took                              time.Duration
}

// total counts the anomalies, client errors included: an error is
// something Redis itself would not have returned.
func (r *rywResult) total() int64 {
	return r.ryw.Load() + r.monotonic.Load() + r.stale.Load() + r.impossible.Load() + r.errors.Load()
}

func (r *rywResult) anomaly(kind *atomic.Int64, name, format string, args ...any) {
	kind.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.examples[name]) < 5 {
		r.examples[name] = append(r.examples[name], fmt.Sprintf(format, args...))
	}
}

func (r *rywResult) report(t *testing.T) {
	ops := r.ops.Load()
	t.Logf("%d operations in %v (%.0f/s): %d anomalies: read-your-writes %d, monotonic %d, stale after ack %d, impossible %d, client errors %d",
		ops, r.took.Round(time.Millisecond), float64(ops)/r.took.Seconds(), r.total(),
		r.ryw.Load(), r.monotonic.Load(), r.stale.Load(), r.impossible.Load(), r.errors.Load())
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, ex := range r.examples {
		t.Logf("  %s, e.g.: %s", name, strings.Join(ex, "; "))
	}
}

// rywBudget returns when a configuration's run stops: after FUNNEL_RYW_OPS
// operations, or FUNNEL_RYW_TIME, or the short default.
func rywBudget(t *testing.T) (ops int64, d time.Duration) {
	if v := os.Getenv("FUNNEL_RYW_OPS"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			t.Fatalf("FUNNEL_RYW_OPS=%q: want a positive count", v)
		}
		return n, 0
	}
	if v := os.Getenv("FUNNEL_RYW_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("FUNNEL_RYW_TIME=%q: want a positive Go duration", v)
		}
		return 0, d
	}
	return 0, rywDefaultTime
}

// runRYW runs the writers and readers against addr until the budget is
// spent. hook, if set, is added to every client (the self-check's fault).
func runRYW(t *testing.T, addr string, proto int, seed uint64, hook redis.Hook) *rywResult {
	opsTarget, dur := rywBudget(t)
	res := &rywResult{examples: map[string][]string{}}
	newClient := func(n int) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr, Protocol: proto, PoolSize: n, MaxRetries: -1,
			DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
		if hook != nil {
			c.AddHook(hook)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	writers, readers := newClient(rywWriters), newClient(rywReaders/2)

	// acked[k] is the highest value of key k whose SET has been answered
	// OK; issued[k] the highest sent. Every key starts at 0.
	nkeys := rywWriters * rywKeysPerW
	acked, issued := make([]atomic.Int64, nkeys), make([]atomic.Int64, nkeys)
	names := make([]string, nkeys)
	ctx := context.Background()
	for w := range rywWriters {
		for k := range rywKeysPerW {
			names[w*rywKeysPerW+k] = rywKey(w, k)
			if err := writers.Set(ctx, rywKey(w, k), 0, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if dur > 0 {
		runCtx, cancel = context.WithTimeout(ctx, dur)
		defer cancel()
	}
	done := func() bool {
		return runCtx.Err() != nil || opsTarget > 0 && res.ops.Load() >= opsTarget
	}
	// A failed command is counted and the run goes on: its effect is
	// unknown, so it is not checked, and the checks never assume it. Past
	// rywMaxErrors the run stops: funnel is down, and no count would be
	// reached.
	fail := func(who string, err error) {
		if runCtx.Err() != nil {
			return
		}
		if n := res.errors.Add(1); n >= rywMaxErrors {
			cancel()
		}
		res.mu.Lock()
		defer res.mu.Unlock()
		if len(res.examples["client errors"]) < 5 {
			res.examples["client errors"] = append(res.examples["client errors"], who+": "+err.Error())
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range rywWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := newRand(seed, uint64(w))
			counters := make([]int64, rywKeysPerW)
			for !done() {
				k := r.IntN(rywKeysPerW)
				i := w*rywKeysPerW + k
				counters[k]++
				v := counters[k]
				issued[i].Store(v)
				var got string
				var err error
				if r.IntN(5) == 0 { // SET and GET in one pipeline
					pipe := writers.Pipeline()
					set := pipe.Set(runCtx, names[i], v, 0)
					get := pipe.Get(runCtx, names[i])
					_, err = pipe.Exec(runCtx)
					if err == nil {
						err = set.Err()
						res.ops.Add(1)
					}
					got = get.Val()
				} else {
					err = writers.Set(runCtx, names[i], v, 0).Err()
					if err == nil {
						acked[i].Store(v)
						res.ops.Add(1)
						got, err = writers.Get(runCtx, names[i]).Result()
					}
				}
				if err != nil {
					fail(fmt.Sprintf("writer %d", w), err)
					continue
				}
				acked[i].Store(v)
				res.ops.Add(1)
				if got != strconv.FormatInt(v, 10) {
					res.anomaly(&res.ryw, "read-your-writes", "%s: wrote %d, read back %q", names[i], v, got)
				}
			}
		}()
	}
	for rd := range rywReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := newRand(seed, uint64(1000+rd))
			last := make([]int64, nkeys)
			check := func(i int, before int64, got string) {
				n, err := strconv.ParseInt(got, 10, 64)
				switch {
				case err != nil || n > issued[i].Load():
					res.anomaly(&res.impossible, "impossible value", "%s: read %q, highest written %d", names[i], got, issued[i].Load())
				case n < last[i]:
					res.anomaly(&res.monotonic, "monotonic reads", "%s: read %d after %d", names[i], n, last[i])
				case n < before:
					res.anomaly(&res.stale, "stale after ack", "%s: read %d, but %d was acknowledged before the read", names[i], n, before)
				}
				last[i] = max(last[i], n)
			}
			for !done() {
				switch r.IntN(4) {
				case 0: // a pipeline of GETs
					idx := make([]int, 2+r.IntN(7))
					before := make([]int64, len(idx))
					pipe := readers.Pipeline()
					gets := make([]*redis.StringCmd, len(idx))
					for j := range idx {
						idx[j] = r.IntN(nkeys)
						before[j] = acked[idx[j]].Load()
						gets[j] = pipe.Get(runCtx, names[idx[j]])
					}
					if _, err := pipe.Exec(runCtx); err != nil {
						fail(fmt.Sprintf("reader %d", rd), err)
						continue
					}
					for j, g := range gets {
						res.ops.Add(1)
						check(idx[j], before[j], g.Val())
					}
				case 1: // MGET of a few keys
					idx := []int{r.IntN(nkeys), r.IntN(nkeys), r.IntN(nkeys)}
					before := []int64{acked[idx[0]].Load(), acked[idx[1]].Load(), acked[idx[2]].Load()}
					vals, err := readers.MGet(runCtx, names[idx[0]], names[idx[1]], names[idx[2]]).Result()
					if err != nil {
						fail(fmt.Sprintf("reader %d", rd), err)
						continue
					}
					res.ops.Add(1)
					for j, v := range vals {
						s, _ := v.(string)
						check(idx[j], before[j], s)
					}
				default:
					i := r.IntN(nkeys)
					before := acked[i].Load()
					got, err := readers.Get(runCtx, names[i]).Result()
					if err != nil {
						fail(fmt.Sprintf("reader %d", rd), err)
						continue
					}
					res.ops.Add(1)
					check(i, before, got)
				}
			}
		}()
	}
	wg.Wait()
	res.took = time.Since(start)
	if res.errors.Load() >= rywMaxErrors {
		res.report(t)
		t.Fatalf("stopped after %d client errors", res.errors.Load())
	}
	return res
}

// upstreamClients returns how many clients a redis-server has, less the one
// asking: the upstream connections funnel opened.
func upstreamClients(t *testing.T, addr string) int {
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, MaxRetries: -1})
	defer c.Close()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(list, "\n") - 1
}

// staleHook makes one GET in 50 return a value its key held before, as a
// cache serving stale data would. It is the fault the self-check injects.
type staleHook struct {
	mu   sync.Mutex
	r    *rand.Rand
	seen map[string][]string // values GET returned, per key, oldest first
}

func (h *staleHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *staleHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.spoil(cmd)
		return err
	}
}

func (h *staleHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			h.spoil(cmd)
		}
		return err
	}
}

func (h *staleHook) spoil(cmd redis.Cmder) {
	get, ok := cmd.(*redis.StringCmd)
	if !ok || cmd.Name() != "get" || get.Err() != nil {
		return
	}
	key := fmt.Sprint(cmd.Args()[1])
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.seen[key]
	if len(old) > 0 && h.r.IntN(50) == 0 {
		get.SetVal(old[0])
	}
	h.seen[key] = append(old, get.Val())
	if len(h.seen[key]) > 8 {
		h.seen[key] = h.seen[key][1:]
	}
}
