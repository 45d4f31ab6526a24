package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// result collects one request's outcome.
type result struct {
	once  sync.Once
	done  chan struct{}
	reply string
	err   error
}

func newResult() *result { return &result{done: make(chan struct{})} }

func (r *result) Complete(reply []byte, err error) {
	r.once.Do(func() {
		r.reply, r.err = string(reply), err
		close(r.done)
	})
}

func (r *result) wait(t *testing.T) (string, error) {
	t.Helper()
	select {
	case <-r.done:
		return r.reply, r.err
	case <-time.After(10 * time.Second):
		t.Fatal("request never completed")
		return "", nil
	}
}

func newPool(t *testing.T, url string, opts Options) *Pool {
	t.Helper()
	up, err := ParseURL(url, TLSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	opts.Metrics = metrics.New(prometheus.NewRegistry())
	p := New(up, opts)
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// upPool starts a Redis and a pool for it whose first connection is up
// (a PING went through it).
func upPool(t *testing.T, opts Options) (*redistest.Server, *Pool) {
	t.Helper()
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, opts)
	if _, err := do(t, p, "*1\r\n$4\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	return rs, p
}

func do(t *testing.T, p *Pool, raw string) (string, error) {
	t.Helper()
	r := newResult()
	p.Submit(context.Background(), p.Pick(), &Request{Raw: []byte(raw), Done: r})
	return r.wait(t)
}

func TestLazyConnectAndLogin(t *testing.T) {
	rs := redistest.Start(t, "--requirepass", "pw")
	p := newPool(t, "redis://:pw@"+rs.Addr+"/3", Options{Size: 3})
	before := rs.CommandStats(t)
	time.Sleep(100 * time.Millisecond)
	if p.UpCount() != 0 {
		t.Fatal("pool connected before any request")
	}
	if got, err := do(t, p, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"); err != nil || got != "+OK\r\n" {
		t.Fatalf("SET: %q %v", got, err)
	}
	if p.UpCount() != 1 {
		t.Fatalf("%d connections up after one request", p.UpCount())
	}
	// The URL's db was selected: the key is in db 3.
	if got, err := do(t, p, "*1\r\n$6\r\nDBSIZE\r\n"); err != nil || got != ":1\r\n" {
		t.Fatalf("DBSIZE: %q %v", got, err)
	}
	// Less the AUTH that the CommandStats call itself sends.
	stats := rs.CommandStats(t)
	if auth := stats["auth"] - before["auth"] - 1; auth != 1 || stats["select"] != 1 {
		t.Fatalf("login commands: auth %d select %d", auth, stats["select"])
	}
}

// TestRESP3Login: a RESP3 pool logs in with HELLO 3 AUTH (one command for
// both) and SELECT, and its replies come in RESP3.
func TestRESP3Login(t *testing.T) {
	rs := redistest.Start(t, "--requirepass", "pw")
	up, err := ParseURL("redis://:pw@"+rs.Addr+"/2", TLSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	up.Proto = 3
	p := New(up, Options{Size: 1, Metrics: metrics.New(prometheus.NewRegistry())})
	t.Cleanup(func() { p.Close(context.Background()) })
	before := rs.CommandStats(t)
	if got, err := do(t, p, "*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\nv\r\n"); err != nil || got != ":1\r\n" {
		t.Fatalf("HSET: %q %v", got, err)
	}
	if got, err := do(t, p, "*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n"); err != nil || got != "%1\r\n$1\r\nf\r\n$1\r\nv\r\n" {
		t.Fatalf("HGETALL in RESP3: %q %v", got, err)
	}
	stats := rs.CommandStats(t)
	if stats["hello"]-before["hello"] != 1 || stats["select"] != 1 || stats["auth"]-before["auth"] != 1 {
		t.Fatalf("login commands: hello %d select %d auth %d (1 is CommandStats')", stats["hello"]-before["hello"], stats["select"], stats["auth"]-before["auth"])
	}
	// The wrong password fails the login with Redis's error.
	up.Password = "bad"
	bad := New(up, Options{Size: 1, Metrics: metrics.New(prometheus.NewRegistry())})
	t.Cleanup(func() { bad.Close(context.Background()) })
	if _, err := do(t, bad, "*1\r\n$4\r\nPING\r\n"); err == nil || !strings.Contains(err.Error(), "login refused: WRONGPASS") {
		t.Fatalf("wrong password: %v", err)
	}
}

func TestWrongPasswordIsUnavailable(t *testing.T) {
	rs := redistest.Start(t, "--requirepass", "pw")
	p := newPool(t, "redis://:bad@"+rs.Addr, Options{Size: 1})
	_, err := do(t, p, "*1\r\n$4\r\nPING\r\n")
	var pe *Error
	if !errors.As(err, &pe) || pe.Kind != Unavailable || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("got %v", err)
	}
}

func TestMultiReplyRequestDeliversLast(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 1})
	r := newResult()
	raw := "*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*1\r\n$4\r\nEXEC\r\n"
	p.Submit(context.Background(), p.Pick(), &Request{Raw: []byte(raw), Replies: 3, Done: r})
	if got, err := r.wait(t); err != nil || got != "*1\r\n:1\r\n" {
		t.Fatalf("got %q %v", got, err)
	}
}

func TestCloseFailsLaterRequests(t *testing.T) {
	_, p := upPool(t, Options{Size: 2})
	p.Close(context.Background())
	p.Close(context.Background()) // idempotent
	_, err := do(t, p, "*1\r\n$4\r\nPING\r\n")
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// TestPickConcentratesLoad checks that light concurrent load shares one
// connection (so it pipelines) and that heavy load spreads.
func TestPickConcentratesLoad(t *testing.T) {
	_, p := upPool(t, Options{Size: 4})
	first := p.Pick()
	if !first.Up() {
		t.Fatal("Pick chose a fresh slot while a live connection was idle")
	}
	first.load.Add(pipelineWeight) // as if that many requests were in flight
	defer first.load.Add(-pipelineWeight)
	if p.Pick() == first {
		t.Fatal("Pick did not spread load off a busy connection")
	}
}

// reuser overwrites the request's bytes as soon as it completes, as funnel
// does when it recycles a request.
type reuser struct {
	raw []byte
	res *result
}

func (u reuser) Complete(reply []byte, err error) {
	for i := range u.raw {
		u.raw[i] = 'x'
	}
	u.res.Complete(reply, err)
}

// TestCompletedRequestBytesAreFree: a completer may reuse Raw at once. Run
// with -race, this fails if the writer could still be reading Raw (a large
// request is written straight from it) with no happens-before edge to the
// completion.
func TestCompletedRequestBytesAreFree(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 1})
	for i := 0; i < 20; i++ {
		val := strings.Repeat("v", 256<<10)
		raw := []byte(fmt.Sprintf("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n", len(val), val))
		res := newResult()
		p.Submit(context.Background(), p.Pick(), &Request{Raw: raw, Done: reuser{raw: raw, res: res}})
		if got, err := res.wait(t); err != nil || got != "+OK\r\n" {
			t.Fatalf("SET: %q %v", got, err)
		}
	}
}

// TestPickAvoidsStalledConnection: a connection whose requests have had no
// reply for a while (here a BLPOP that blocks it) gets no new client, even
// with few requests on it; once it is answered it gets them again.
func TestPickAvoidsStalledConnection(t *testing.T) {
	rs, p := upPool(t, Options{Size: 2})
	busy := p.Pick()
	blpop := newResult()
	p.Submit(context.Background(), busy, &Request{Raw: []byte("*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n"), Timeout: NoTimeout, Done: blpop})
	deadline := time.Now().Add(5 * time.Second)
	for busy.outstanding.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the BLPOP was never written")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(5 * stallFloor)
	if !busy.stalled(time.Now().UnixNano()) {
		t.Fatal("a connection blocked in BLPOP for 5 stall floors is not stalled")
	}
	if got := p.Pick(); got == busy {
		t.Fatal("Pick chose the stalled connection with another slot free")
	}
	if _, err := rs.Do("RPUSH", "q", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := blpop.wait(t); err != nil {
		t.Fatal(err)
	}
	if busy.stalled(time.Now().UnixNano()) {
		t.Fatal("an answered connection still counts as stalled")
	}
	if got := p.Pick(); got != busy {
		t.Fatal("Pick did not go back to the first connection once it was answered")
	}
}

// TestStallScalesWithReplyGap: a connection whose replies usually come far
// apart (a remote upstream) is not called stalled after the floor alone.
func TestStallScalesWithReplyGap(t *testing.T) {
	c := newConn(nil, SharedLane, 1)
	now := time.Now().UnixNano()
	c.outstanding.Store(1)
	c.progressAt.Store(now - int64(10*stallFloor))
	if !c.stalled(now) {
		t.Fatal("no reply for 10 floors with no usual gap: not stalled")
	}
	c.replyGap.Store(int64(5 * stallFloor)) // replies come every 5 floors
	if c.stalled(now) {
		t.Fatal("no reply for 2 usual gaps counted as a stall")
	}
	c.outstanding.Store(0)
	c.replyGap.Store(0)
	if c.stalled(now) {
		t.Fatal("a connection with nothing outstanding counted as stalled")
	}
}

// TestPickFollowsItsRules checks Pick against its rules on random pools of
// slots in every state, load, and stall: the first live connection that is
// not stalled and under pipelineWeight; else the first fresh slot (idle, or
// down and due for a redial); else the least loaded live one not stalled;
// else the least loaded of all. Above all it never picks a stalled
// connection while one that is not stalled could take the client.
func TestPickFollowsItsRules(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	now := time.Now()
	for round := range 20000 {
		p := &Pool{}
		for range 1 + rng.IntN(6) {
			c := newConn(p, SharedLane, 1)
			c.state.Store([]int32{stateIdle, stateDialing, stateUp, stateUp, stateDown}[rng.IntN(5)])
			c.load.Store(int64([]int{0, 1, pipelineWeight - 1, pipelineWeight, 2 * pipelineWeight}[rng.IntN(5)]))
			if rng.IntN(2) == 0 {
				c.outstanding.Store(1 + rng.Int64N(5))
				// A usual gap of 0-10 floors, and no reply for half or
				// twice the stall limit: far from its edge, so the
				// microseconds between Pick's clock and the check's do
				// not matter.
				gap := rng.Int64N(10 * int64(stallFloor))
				c.replyGap.Store(gap)
				limit := max(int64(stallFloor), stallFactor*gap)
				c.progressAt.Store(now.UnixNano() - []int64{limit / 2, 2 * limit}[rng.IntN(2)])
			}
			c.retryAt = now.Add(time.Duration(rng.IntN(3)-1) * time.Second) // past, now-ish or future
			p.conns = append(p.conns, c)
		}
		got := p.Pick()
		// Pick reads the clock after now: a connection's stall can only
		// have grown, so the rules are judged at Pick's own moment too.
		at := time.Now().UnixNano()
		want := expectedPick(p.conns, at)
		if got != want {
			for i, c := range p.conns {
				t.Logf("slot %d: state %d load %d outstanding %d stalled %v", i, c.state.Load(), c.Load(), c.outstanding.Load(), c.stalled(at))
			}
			t.Fatalf("round %d: Pick chose slot %d, the rules say slot %d", round, index(p.conns, got), index(p.conns, want))
		}
	}
}

// expectedPick is Pick's rules written out plainly, judged at now.
func expectedPick(conns []*Conn, now int64) *Conn {
	live := func(c *Conn) bool { return c.state.Load() == stateUp && !c.stalled(now) }
	for _, c := range conns {
		if live(c) && c.Load() < pipelineWeight {
			return c
		}
	}
	for _, c := range conns {
		if s := c.state.Load(); s == stateIdle || s == stateDown && c.usable() {
			return c
		}
	}
	least := func(ok func(*Conn) bool) *Conn {
		var best *Conn
		for _, c := range conns {
			if ok(c) && (best == nil || c.Load() < best.Load()) {
				best = c
			}
		}
		return best
	}
	if c := least(live); c != nil {
		return c
	}
	return least(func(*Conn) bool { return true })
}

func index(conns []*Conn, c *Conn) int {
	for i, x := range conns {
		if x == c {
			return i
		}
	}
	return -1
}
