package proxy

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRoomGoesToWaitersInOrder: clients waiting for room in funnel's
// memory budget are let in in the order they came, only as many as the
// freed room fits; one put back at the front goes first; room a client was
// let in for and did not use passes to the next; one that left is skipped;
// one the room does not fit does not hold up one behind it that it fits.
func TestRoomGoesToWaitersInOrder(t *testing.T) {
	b := newMemoryBudget(100, metrics.New(prometheus.NewRegistry()))
	b.add(100)
	type waiter struct {
		roomMade <-chan struct{}
		leave    func(used bool)
	}
	var line []waiter
	for range 5 {
		roomMade, leave := b.awaitRoom(10, false)
		line = append(line, waiter{roomMade, leave})
	}
	letIn := func(want ...int) {
		t.Helper()
		for i, w := range line {
			got := len(w.roomMade) == 1
			wanted := false
			for _, j := range want {
				wanted = wanted || i == j
			}
			if got != wanted {
				t.Fatalf("waiter %d let in: %v, want %v (want let in: %v)", i, got, wanted, want)
			}
		}
	}
	letIn()
	b.add(-25) // room for two
	letIn(0, 1)
	for _, w := range line[:2] {
		<-w.roomMade
		b.reserve(10) // each uses its room
		w.leave(true)
	}
	letIn() // 5 bytes left: nobody fits
	line[3].leave(false)
	letIn()        // one giving up makes no room
	b.reserve(-10) // room for one
	letIn(2)
	<-line[2].roomMade
	b.add(10) // the third is beaten to its room ...
	line[2].leave(false)
	again, leaveAgain := b.awaitRoom(10, true) // ... and is back at the front
	b.add(-10)                                 // room for one
	if len(again) != 1 {
		t.Fatal("the waiter put back at the front was not let in first")
	}
	letIn() // nor the one behind it: the room fitted one
	leaveAgain(false)
	letIn(4) // the room it did not use (nothing reserved it) goes on
	line[4].leave(false)
	if n := b.waiting.Load(); n != 0 {
		t.Fatalf("%d waiting after every waiter left", n)
	}

	// A waiter the room does not fit does not hold up one behind it that
	// it fits: a client with huge replies waits for its room alone.
	b = newMemoryBudget(100, metrics.New(prometheus.NewRegistry()))
	b.add(90)
	big, leaveBig := b.awaitRoom(50, false)
	small, leaveSmall := b.awaitRoom(10, false)
	if len(small) != 1 || len(big) != 0 {
		t.Fatalf("let in: the one ahead needing 50 %v, the one behind needing 10 %v; want only the one behind (10 bytes left)", len(big) == 1, len(small) == 1)
	}
	leaveBig(false)
	leaveSmall(true)
	if n := b.waiting.Load(); n != 0 {
		t.Fatalf("%d waiting after every waiter left", n)
	}
}

// TestOwnShareWaitsOutOfMemoryLine: a client whose average reply is 1 MiB
// pipelines ten small reads with a 4 MiB output limit while a script
// holds Redis busy: four go upstream, and the fifth waits on the client's
// own share. It waits for the client's own progress, not in the memory
// budget's line, where every reply written to any other client would wake
// it. Once the script ends, every read is answered, in order.
func TestOwnShareWaitsOutOfMemoryLine(t *testing.T) {
	const reads = 10
	f, want := funnelWithBigValue(t, Options{ClientOutputLimit: 4 << 20, DisableCoalesce: true}, 1<<20)
	if _, err := f.Redis.Do("SET", "small", "s"); err != nil {
		t.Fatal(err)
	}
	reader := dialRaw(t, f.Addr)
	learnReplySize(t, reader, want)
	sent := func() float64 { return testutil.ToFloat64(f.Metrics.UpstreamCommands.WithLabelValues("get")) }
	before := sent()

	// The script runs straight on Redis, so it holds every connection.
	script := dialRaw(t, f.Redis.Addr)
	script.send("EVAL", "local i = 0 while i < 50000000 do i = i + 1 end return 1", "0")
	time.Sleep(50 * time.Millisecond) // running
	var burst []byte
	for range reads {
		burst = resp.AppendCommand(burst, []byte("GET"), []byte("small"))
	}
	reader.write(burst)
	waitUntil(t, 5*time.Second, "four reads sent upstream", func() bool { return sent() == before+4 })
	for range 20 {
		if n := f.Server.mem.waiting.Load(); n != 0 {
			t.Fatalf("a client waiting on its own output limit stood in the memory budget's line (%d waiting)", n)
		}
		time.Sleep(time.Millisecond)
	}
	if got := sent(); got != before+4 {
		t.Fatalf("%v reads sent upstream while the share was full, want 4", got-before)
	}
	if got, err := script.tryReply(10 * time.Second); err != nil || got != ":1\r\n" {
		t.Fatalf("the script: %q %v", got, err)
	}
	for i := range reads {
		if got, err := reader.tryReply(10 * time.Second); err != nil || got != "$1\r\ns\r\n" {
			t.Fatalf("read %d: %q %v", i, got, err)
		}
	}
}

// TestReplyLargerThanMemoryLimit: a client whose replies are each larger
// than funnel's whole memory budget cannot wait for room, since none ever
// fits one: it goes one request at a time, each let in once the reply
// before is written. Pipelined, every one still comes, in order, well
// before memoryWait would close the client.
func TestReplyLargerThanMemoryLimit(t *testing.T) {
	const gets = 4
	f, want := funnelWithBigValue(t, Options{MaxMemory: 1 << 20, DisableCoalesce: true}, 2<<20)
	c := dialRaw(t, f.Addr)
	learnReplySize(t, c, want)
	var burst []byte
	for range gets {
		burst = resp.AppendCommand(burst, []byte("GET"), []byte("big"))
		burst = resp.AppendCommand(burst, []byte("INCR"), []byte("n"))
	}
	start := time.Now()
	c.write(burst)
	for i := range gets {
		if got, err := c.tryReply(memoryWait / 2); err != nil || len(got) != want {
			t.Fatalf("GET %d: %d bytes, %v", i, len(got), err)
		}
		if got, err := c.tryReply(memoryWait / 2); err != nil || got != ":"+strconv.Itoa(i+1)+"\r\n" {
			t.Fatalf("INCR %d: %q, %v", i, got, err)
		}
	}
	if d := time.Since(start); d > memoryWait/2 {
		t.Fatalf("%d pipelined GETs of a value larger than the memory limit took %v", gets, d)
	}
}

// funnelWithBigValue starts funnel with opts and stores size bytes at
// "big"; it returns funnel and the length of GET big's reply.
func funnelWithBigValue(t *testing.T, opts Options, size int) (*funnel, int) {
	t.Helper()
	f := startFunnel(t, opts, pool.Options{})
	if _, err := f.Redis.Do("SET", "big", strings.Repeat("v", size)); err != nil {
		t.Fatal(err)
	}
	return f, len(fmt.Sprintf("$%d\r\n\r\n", size)) + size
}

// learnReplySize has c read "big" once, so funnel knows its client's
// average reply size.
func learnReplySize(t *testing.T, c *rawConn, want int) {
	t.Helper()
	if got := c.do("GET", "big"); len(got) != want {
		t.Fatalf("GET big: %d bytes, want %d", len(got), want)
	}
}

// TestRoomLineMatchesModel drives the memory budget's line with random
// joins (at the back, or at the front as a client beaten to its room),
// frees, growth, reservations and leavings, and checks after each step
// that exactly the waiters a plain first-fit over the line in order lets
// in were let in: each that the room left fits, none that it does not, and
// none twice. It also checks the waiting count.
func TestRoomLineMatchesModel(t *testing.T) {
	const limit = 100
	type waiter struct {
		need     int64
		roomMade <-chan struct{}
		leave    func(used bool)
	}
	for seed := range uint64(300) {
		rng := newRand(seed, 7)
		b := newMemoryBudget(limit, metrics.New(prometheus.NewRegistry()))
		var used, reserved int64
		var line, letIn []*waiter // the model: in line, in order; let in, holding no room yet
		// expect runs first-fit over the model's line, as a wake should.
		expect := func() map[*waiter]bool {
			want := map[*waiter]bool{}
			left := limit - used - reserved
			var kept []*waiter
			for _, w := range line {
				if w.need <= left {
					left -= w.need
					want[w] = true
					letIn = append(letIn, w)
				} else {
					kept = append(kept, w)
				}
			}
			line = kept
			return want
		}
		for step := range 200 {
			before := append([]*waiter(nil), line...)
			want := map[*waiter]bool{}
			switch op := rng.IntN(6); {
			case op == 0 || op == 1 && len(line) == 0:
				w := &waiter{need: 1 + rng.Int64N(60)}
				front := rng.IntN(4) == 0
				w.roomMade, w.leave = b.awaitRoom(w.need, front)
				if front {
					line = append([]*waiter{w}, line...)
				} else {
					line = append(line, w)
				}
				before = append([]*waiter(nil), line...)
				if used+reserved+w.need <= limit {
					want = expect()
				}
			case op == 1: // one in line gives up
				i := rng.IntN(len(line))
				line[i].leave(false)
				line = append(line[:i:i], line[i+1:]...)
				before = append([]*waiter(nil), line...)
			case op == 2 && len(letIn) > 0: // one let in leaves, taking its room or not
				i := rng.IntN(len(letIn))
				w := letIn[i]
				letIn = append(letIn[:i:i], letIn[i+1:]...)
				if rng.IntN(2) == 0 {
					b.reserve(w.need)
					reserved += w.need
					w.leave(true)
				} else {
					w.leave(false)
					want = expect()
				}
			case op == 3 && used > 0: // replies written, requests released
				n := 1 + rng.Int64N(used)
				used -= n
				b.add(-n)
				if used <= limit {
					want = expect()
				}
			case op == 4 && reserved > 0: // replies came in
				n := 1 + rng.Int64N(reserved)
				reserved -= n
				b.reserve(-n)
				want = expect()
			default: // more held
				n := rng.Int64N(40)
				used += n
				b.add(n)
			}
			for _, w := range before {
				if got := len(w.roomMade) == 1; got != want[w] {
					t.Fatalf("seed %d step %d: a waiter needing %d with %d held and %d reserved: let in %v, want %v",
						seed, step, w.need, used, reserved, got, want[w])
				}
			}
			for _, w := range letIn {
				if want[w] {
					<-w.roomMade // taken, so a second token would show
				}
			}
			if n := b.waiting.Load(); int(n) != len(line) {
				t.Fatalf("seed %d step %d: %d waiting, %d in line", seed, step, n, len(line))
			}
		}
	}
}
