package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
)

// TestTinyBoundsKeepOrder sends many clients' commands through one
// connection whose queue holds 2 requests and which writes at most 3 before
// their replies are read, so submitters keep waiting for room and the
// writer for replies: every client still gets every reply, in its order.
func TestTinyBoundsKeepOrder(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 1, QueueLen: 2, MaxInFlight: 3})
	const clients, each = 8, 300
	// Bounded, so that a submitter never let in fails the test, not hangs it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for g := range clients {
		wg.Go(func() {
			key := fmt.Sprintf("n%d", g)
			raw := fmt.Sprintf("*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n", len(key), key)
			results := make([]*result, each)
			for i := range results {
				results[i] = newResult()
				// Half wait for room, half only take it when there is some.
				if i%2 == 0 || !p.TrySubmit(p.conns[0], &Request{Raw: []byte(raw), Done: results[i]}) {
					p.Submit(ctx, p.conns[0], &Request{Raw: []byte(raw), Done: results[i]})
				}
			}
			for i, r := range results {
				got, err := r.wait(t)
				if want := fmt.Sprintf(":%d\r\n", i+1); err != nil || got != want {
					errs <- fmt.Errorf("client %d, reply %d: %q %v, want %q", g, i, got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	requireUnloaded(t, p)
}

// TestFullQueueWaits fills a connection: a BLPOP that blocks holds its one
// in-flight place, the writer holds the next request and the queue the one
// after. Then TrySubmit refuses, and Submit waits until its context ends
// and fails its request; once the BLPOP is served, what was held goes
// through in order.
func TestFullQueueWaits(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 1, QueueLen: 1, MaxInFlight: 1})
	c := p.conns[0]
	blpop, second, third := newResult(), newResult(), newResult()
	first := &Request{Raw: []byte("*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n"), Timeout: NoTimeout, Done: blpop}
	next := &Request{Raw: []byte("*2\r\n$4\r\nINCR\r\n$1\r\na\r\n"), Done: second}
	p.Submit(context.Background(), c, first)
	p.Submit(context.Background(), c, next)
	deadline := time.Now().Add(10 * time.Second)
	for c.Load() != first.weight+next.weight || queuedNow(c) != 0 { // the writer took the second
		if time.Now().After(deadline) {
			t.Fatal("the writer never took the second request")
		}
		time.Sleep(time.Millisecond)
	}
	p.Submit(context.Background(), c, &Request{Raw: []byte("*2\r\n$4\r\nINCR\r\n$1\r\na\r\n"), Done: third})

	refused := newResult()
	if p.TrySubmit(c, &Request{Raw: []byte("*1\r\n$4\r\nPING\r\n"), Done: refused}) {
		t.Fatal("TrySubmit queued on a full queue")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	waited := newResult()
	start := time.Now()
	p.Submit(ctx, c, &Request{Raw: []byte("*1\r\n$4\r\nPING\r\n"), Done: waited})
	if _, err := waited.wait(t); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 40*time.Millisecond {
		t.Fatalf("Submit on a full queue: %v after %v", err, time.Since(start))
	}

	if _, err := rs.Do("RPUSH", "q", "x"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		r    *result
		want string
	}{{blpop, "*2\r\n$1\r\nq\r\n$1\r\nx\r\n"}, {second, ":1\r\n"}, {third, ":2\r\n"}} {
		if got, err := w.r.wait(t); err != nil || got != w.want {
			t.Fatalf("got %q %v, want %q", got, err, w.want)
		}
	}
	if got, _ := rs.DoRaw("GET", "a"); got != "$1\r\n2\r\n" {
		t.Fatalf("GET a: %q, want 2 (the refused and cancelled requests must not run)", got)
	}
	requireUnloaded(t, p)
}

// requireUnloaded fails the test unless every request's weight left its
// connection's load when it completed, on every path.
func requireUnloaded(t *testing.T, p *Pool) {
	t.Helper()
	for i, c := range p.conns {
		if n := c.Load(); n != 0 {
			t.Errorf("slot %d: load %d with every request completed", i, n)
		}
	}
}

func queuedNow(c *Conn) int {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return c.queued.n
}

// once records a request's outcome and counts how often it was told.
type once struct {
	calls atomic.Int32
	reply string
	err   error
	done  chan struct{}
}

func (o *once) Complete(reply []byte, err error) {
	if o.calls.Add(1) == 1 {
		o.reply, o.err = string(reply), err
		close(o.done)
	}
}

// TestBrokenConnectionsLoseNothing breaks a pool's connections at random
// moments (CLIENT KILL from the side, and Break) while clients pipeline
// INCRs, each after a GET of a 64 KiB value (so replies take many reads and
// a break often finds requests taken by the reader and not answered),
// through tiny queues: every request is completed exactly once, with its
// reply or a funnel error, none waits for ever, each whole value comes
// whole, and each client's successful replies stay in its order (each
// counter only rises).
func TestBrokenConnectionsLoseNothing(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 2, QueueLen: 4, MaxInFlight: 8, Timeout: 5 * time.Second})
	const clients, each = 6, 400
	big := strings.Repeat("v", 64<<10)
	if _, err := rs.Do("SET", "big", big); err != nil {
		t.Fatal(err)
	}
	bigReply := fmt.Sprintf("$%d\r\n%s\r\n", len(big), big)
	stop := make(chan struct{})
	var killer sync.WaitGroup
	killer.Go(func() {
		rng := rand.New(rand.NewPCG(3, 4))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(rng.IntN(3000)) * time.Microsecond):
			}
			if rng.IntN(2) == 0 {
				_, _ = rs.Do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
			} else {
				p.conns[rng.IntN(len(p.conns))].Break()
			}
		}
	})
	var wg sync.WaitGroup
	var failed, succeeded atomic.Int64
	errs := make(chan error, clients)
	for g := range clients {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", g)
			incr := []byte(fmt.Sprintf("*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n", len(key), key))
			get := []byte("*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
			// A client keeps to one connection, as funnel's sessions do
			// while they have requests in flight.
			c := p.conns[g%len(p.conns)]
			outcomes := make([]*once, each)
			for i := range outcomes {
				outcomes[i] = &once{done: make(chan struct{})}
				raw := incr
				if i%2 == 0 {
					raw = get
				}
				r := &Request{Raw: raw, Done: outcomes[i]}
				if i%2 == 0 {
					r.ReplySize = int64(len(bigReply))
				}
				p.Submit(context.Background(), c, r)
			}
			last := int64(0)
			for i, o := range outcomes {
				select {
				case <-o.done:
				case <-time.After(20 * time.Second):
					errs <- fmt.Errorf("client %d: request %d never completed", g, i)
					return
				}
				if o.err != nil {
					var pe *Error
					if !errors.As(o.err, &pe) || !strings.HasPrefix(o.err.Error(), "funnel: ") {
						errs <- fmt.Errorf("client %d, request %d: %v is not a funnel error", g, i, o.err)
						return
					}
					failed.Add(1)
					continue
				}
				succeeded.Add(1)
				if i%2 == 0 {
					if o.reply != bigReply {
						errs <- fmt.Errorf("client %d, request %d: GET big gave %d bytes, want %d", g, i, len(o.reply), len(bigReply))
						return
					}
					continue
				}
				n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(o.reply, ":"), "\r\n"), 10, 64)
				if err != nil || n <= last {
					errs <- fmt.Errorf("client %d, request %d: reply %q after %d", g, i, o.reply, last)
					return
				}
				last = n
			}
			// Told exactly once, also after the others were told.
			for i, o := range outcomes {
				if n := o.calls.Load(); n != 1 {
					errs <- fmt.Errorf("client %d, request %d: completed %d times", g, i, n)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	killer.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	requireUnloaded(t, p)
	if succeeded.Load() == 0 || failed.Load() == 0 {
		t.Fatalf("%d succeeded and %d failed: the breaks must land while requests flow", succeeded.Load(), failed.Load())
	}
	t.Logf("%d succeeded, %d failed with a funnel error", succeeded.Load(), failed.Load())
}
