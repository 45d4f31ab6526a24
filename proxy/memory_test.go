package proxy

import (
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRoomGoesToWaitersInOrder: clients waiting for room in funnel's
// memory budget are let in first come first served, only as many as the
// freed room fits; one put back at the front goes first; room a client was
// let in for and did not use passes to the next; one that left is skipped,
// and its leaving lets in those it held up.
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

	// A waiter at the front that the room does not fit holds up those
	// behind it; once it leaves another way (its own progress let it in),
	// the next that fits is let in.
	b = newMemoryBudget(100, metrics.New(prometheus.NewRegistry()))
	b.add(90)
	_, leaveBig := b.awaitRoom(50, false)
	small, leaveSmall := b.awaitRoom(10, false)
	if len(small) != 0 {
		t.Fatal("a waiter was let in ahead of the one in front of it")
	}
	leaveBig(true)
	if len(small) != 1 {
		t.Fatal("the waiter behind one that left was not let in")
	}
	leaveSmall(true)
	if n := b.waiting.Load(); n != 0 {
		t.Fatalf("%d waiting after every waiter left", n)
	}
}

// TestOwnShareWaitsOutOfMemoryLine: a client pipelines 300 reads of a
// 64 KiB value with a 1 MiB output limit, so it keeps reaching its own
// share and waits for its replies to come and be written. It waits for its
// own progress, not for funnel's memory: it never stands in the memory
// budget's line, where every reply any other client (a busy one here) is
// written would wake it. It still gets every reply, in order.
func TestOwnShareWaitsOutOfMemoryLine(t *testing.T) {
	const valueSize, gets = 64 << 10, 300
	f := startFunnel(t, Options{ClientOutputLimit: 1 << 20, DisableCoalesce: true}, pool.Options{})
	if _, err := f.Redis.Do("SET", "big", strings.Repeat("v", valueSize)); err != nil {
		t.Fatal(err)
	}
	want := len("$65536\r\n\r\n") + valueSize
	stop, halt := stopSignal(t)
	var sampled, inLine atomic.Int64
	go func() {
		for !stopped(stop) {
			sampled.Add(1)
			if f.Server.mem.waiting.Load() > 0 {
				inLine.Add(1)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
	busyDone := make(chan error, 1)
	go func() {
		busy := dialRaw(t, f.Addr)
		for !stopped(stop) {
			if _, err := busy.tryDo(10*time.Second, "INCR", "n"); err != nil {
				busyDone <- err
				return
			}
		}
		busyDone <- nil
	}()

	reader := dialRaw(t, f.Addr)
	if got := reader.do("GET", "big"); len(got) != want { // its average reply size, learnt
		t.Fatalf("GET big: %d bytes", len(got))
	}
	var burst []byte
	for range gets {
		burst = resp.AppendCommand(burst, []byte("GET"), []byte("big"))
	}
	reader.write(burst)
	for i := range gets {
		got, err := reader.tryReply(10 * time.Second)
		if err != nil || len(got) != want {
			t.Fatalf("reply %d: %d bytes, %v", i, len(got), err)
		}
	}
	halt()
	if err := <-busyDone; err != nil {
		t.Fatalf("the busy client: %v", err)
	}
	if n := inLine.Load(); n > 0 {
		t.Fatalf("a client waiting on its own output limit stood in the memory budget's line in %d of %d samples", n, sampled.Load())
	}
}

// TestReplyLargerThanMemoryLimit: a client whose replies are each larger
// than funnel's whole memory budget cannot wait for room, since none ever
// fits one: it goes one request at a time, each let in once the reply
// before is written. Pipelined, every one still comes, in order, well
// before memoryWait would close the client.
func TestReplyLargerThanMemoryLimit(t *testing.T) {
	const valueSize, gets = 2 << 20, 4
	f := startFunnel(t, Options{MaxMemory: 1 << 20, DisableCoalesce: true}, pool.Options{})
	if _, err := f.Redis.Do("SET", "big", strings.Repeat("v", valueSize)); err != nil {
		t.Fatal(err)
	}
	want := len("$2097152\r\n\r\n") + valueSize
	c := dialRaw(t, f.Addr)
	if got := c.do("GET", "big"); len(got) != want { // its average reply size, learnt
		t.Fatalf("GET big: %d bytes", len(got))
	}
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
