package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrLaneFull is returned by Borrow when no exclusive connection became
// free before the caller's deadline.
var ErrLaneFull = errors.New("pool: no exclusive connection free")

// Lane lends exclusive upstream connections, one client at a time, for
// commands that hold a connection: blocking commands and WATCH ... EXEC. At
// most max exist at once; when all are lent, Borrow waits in line. Returned
// connections stay open for reuse until idle for idleTimeout.
type Lane struct {
	pool        *Pool
	max         int
	idleTimeout time.Duration

	mu      sync.Mutex
	idle    []idleConn     // most recently returned last
	open    int            // lent plus idle
	waiters []chan *Conn   // first come, first served
	all     map[*Conn]bool // every open connection, for the final drain
}

type idleConn struct {
	c     *Conn
	since time.Time
}

func newLane(p *Pool, max int, idleTimeout time.Duration) *Lane {
	l := &Lane{pool: p, max: max, idleTimeout: idleTimeout, all: map[*Conn]bool{}}
	l.report() // show the lane's gauges from the start, at 0
	p.wg.Add(1)
	go l.janitor()
	return l
}

// Borrow lends a connection for the caller's sole use until it calls Return
// or Discard. It waits while the lane is full, until ctx ends. The wait,
// 0 when a connection was free, goes to funnel_exclusive_wait_seconds.
func (l *Lane) Borrow(ctx context.Context) (*Conn, error) {
	start := time.Now()
	defer func() { l.pool.metrics.ExclusiveWait.Observe(time.Since(start).Seconds()) }()
	l.mu.Lock()
	if n := len(l.idle); n > 0 {
		c := l.idle[n-1].c
		l.idle = l.idle[:n-1]
		l.mu.Unlock()
		l.report()
		return c, nil
	}
	if l.open < l.max {
		c := l.newConnLocked()
		l.mu.Unlock()
		l.report()
		return c, nil
	}
	ch := make(chan *Conn, 1)
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	l.report()
	select {
	case c := <-ch:
		l.report()
		return c, nil
	case <-ctx.Done():
	case <-l.pool.closing:
	}
	l.mu.Lock()
	for i, w := range l.waiters {
		if w == ch {
			l.waiters = append(l.waiters[:i], l.waiters[i+1:]...)
			l.mu.Unlock()
			l.report()
			return nil, fmt.Errorf("%w (all %d in use)", ErrLaneFull, l.max)
		}
	}
	l.mu.Unlock()
	// A connection was handed over as the wait ended: pass it on.
	l.Return(<-ch)
	return nil, fmt.Errorf("%w (all %d in use)", ErrLaneFull, l.max)
}

// newConnLocked starts a new exclusive connection slot; mu must be held.
func (l *Lane) newConnLocked() *Conn {
	l.open++
	c := newConn(l.pool, ExclusiveLane, 64)
	l.all[c] = true
	l.pool.wg.Add(1)
	go c.run()
	return c
}

// Return gives back a connection that is clean: nothing in flight, no
// WATCH, no MULTI. The first waiter gets it, or it waits idle.
func (l *Lane) Return(c *Conn) {
	l.mu.Lock()
	if len(l.waiters) > 0 {
		w := l.waiters[0]
		l.waiters = l.waiters[1:]
		l.mu.Unlock()
		w <- c
		l.report()
		return
	}
	l.idle = append(l.idle, idleConn{c: c, since: time.Now()})
	l.mu.Unlock()
	l.report()
}

// Discard closes a lent connection that may not be clean (its client left
// while blocked or watching); any request on it fails. Its place in the
// lane goes to the first waiter as a new connection.
func (l *Lane) Discard(c *Conn) {
	c.Close()
	l.mu.Lock()
	l.open--
	delete(l.all, c)
	if len(l.waiters) > 0 {
		w := l.waiters[0]
		l.waiters = l.waiters[1:]
		nc := l.newConnLocked()
		l.mu.Unlock()
		w <- nc
		l.report()
		return
	}
	l.mu.Unlock()
	l.report()
}

// janitor closes connections idle for longer than idleTimeout.
func (l *Lane) janitor() {
	defer l.pool.wg.Done()
	tick := time.NewTicker(max(l.idleTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-l.pool.closing:
			return
		case <-tick.C:
		}
		cutoff := time.Now().Add(-l.idleTimeout)
		l.mu.Lock()
		keep := l.idle[:0]
		for _, ic := range l.idle {
			if ic.since.Before(cutoff) {
				ic.c.Close()
				l.open--
				delete(l.all, ic.c)
			} else {
				keep = append(keep, ic)
			}
		}
		l.idle = keep
		l.mu.Unlock()
		l.report()
	}
}

// conns returns every open exclusive connection.
func (l *Lane) conns() []*Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*Conn, 0, len(l.all))
	for c := range l.all {
		out = append(out, c)
	}
	return out
}

// Stats returns how many exclusive connections are lent, idle, and how
// many borrowers wait.
func (l *Lane) Stats() (inUse, idle, waiting int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open - len(l.idle), len(l.idle), len(l.waiters)
}

func (l *Lane) report() {
	inUse, idle, waiting := l.Stats()
	m := l.pool.metrics
	m.ExclusiveConns.WithLabelValues("in_use").Set(float64(inUse))
	m.ExclusiveConns.WithLabelValues("idle").Set(float64(idle))
	m.ExclusiveWaiting.Set(float64(waiting))
}
