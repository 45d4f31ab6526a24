// Command gnetproxy is the minimal RESP forwarding proxy of ../epoll built
// on gnet v2, to compare the two (see ../README.md). It is a benchmark
// prototype, not a proxy: no commands are interpreted.
//
// Each gnet event loop gets -upstreams connections to Redis registered on
// that same loop (Engine.Register), so clients and their upstream share one
// thread, as in ../epoll. OnTraffic of a client appends its complete
// requests to its upstream; OnTraffic of an upstream hands each reply to the
// client at the head of its FIFO and writes each touched client once.
//
// gnet has no hook at the end of a poll pass, so by default each client's
// OnTraffic writes its requests to the upstream at once (one write per
// client read). With -batch the loop instead defers the upstream write to a
// task run by Execute, which gnet runs after the current pass, so one write
// carries the requests of every client read in it (at the cost of an
// eventfd wake-up per pass).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/bench/eventloop/internal/wire"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/panjf2000/gnet/v2"
)

const poolBuf = 16 << 10

func main() {
	listen := flag.String("listen", "127.0.0.1:7401", "address to listen on")
	upstream := flag.String("upstream", "127.0.0.1:6379", "Redis address")
	procs := flag.Int("procs", 1, "event loops")
	ups := flag.Int("upstreams", 2, "upstream connections per loop")
	batch := flag.Bool("batch", false, "write each upstream once per poll pass (via Execute) instead of once per client read")
	et := flag.Bool("et", false, "gnet edge-triggered I/O")
	flag.Parse()
	uaddr, err := net.ResolveTCPAddr("tcp4", *upstream)
	if err != nil {
		log.Fatal(err)
	}
	p := &proxy{uaddr: uaddr, ups: *ups, procs: *procs, batch: *batch, loops: map[gnet.EventLoop]*loopState{}}
	fmt.Fprintf(os.Stderr, "gnet proxy on %s -> %s, %d loops x %d upstreams, batch=%v\n", *listen, *upstream, *procs, *ups, *batch)
	err = gnet.Run(p, "tcp4://"+*listen,
		gnet.WithMulticore(*procs > 1),
		gnet.WithNumEventLoop(*procs),
		gnet.WithLockOSThread(true),
		gnet.WithReusePort(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithEdgeTriggeredIO(*et),
		gnet.WithLoadBalancing(gnet.LeastConnections))
	if err != nil {
		log.Fatal(err)
	}
}

type proxy struct {
	gnet.BuiltinEventEngine
	uaddr *net.TCPAddr
	ups   int
	procs int
	batch bool

	mu    sync.Mutex
	loops map[gnet.EventLoop]*loopState
}

// loopState is what one event loop owns; only that loop touches it.
type loopState struct {
	el     gnet.EventLoop
	ups    []*upstream
	next   int
	pool   *wire.Pool
	dirty  []*client
	dirtyU []*upstream
	queued bool // a flush task is pending (batch mode)
}

type client struct {
	c      gnet.Conn
	st     *loopState
	up     *upstream
	out    []byte
	dirty  bool
	closed bool
}

type upstream struct {
	c    gnet.Conn
	st   *loopState
	scan resp.ReplyScanner
	q    wire.Queue[*client]
	out  []byte // batch mode: requests not yet written
}

// OnBoot registers the upstream connections; LeastConnections spreads them
// over the loops, procs*ups of them registered one at a time.
func (p *proxy) OnBoot(eng gnet.Engine) gnet.Action {
	go func() {
		for i := 0; i < p.procs*p.ups; i++ {
			u := &upstream{}
			ctx := gnet.NewContext(gnet.NewNetAddrContext(context.Background(), p.uaddr), u)
			// OnBoot runs before the engine has its loops; until they
			// exist Register fails with "the internal engine is empty".
			ch, err := eng.Register(ctx)
			for try := 0; err != nil && try < 500; try++ {
				time.Sleep(10 * time.Millisecond)
				ch, err = eng.Register(ctx)
			}
			if err != nil {
				log.Fatal("register upstream: ", err)
			}
			if r := <-ch; r.Err != nil {
				log.Fatal("register upstream: ", r.Err)
			}
		}
	}()
	return gnet.None
}

func (p *proxy) state(el gnet.EventLoop) *loopState {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.loops[el]
	if st == nil {
		st = &loopState{el: el, pool: wire.NewPool(poolBuf)}
		p.loops[el] = st
	}
	return st
}

func (p *proxy) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	st := p.state(c.EventLoop())
	if u, ok := c.Context().(*upstream); ok {
		u.c, u.st = c, st
		st.ups = append(st.ups, u)
		return nil, gnet.None
	}
	if len(st.ups) == 0 {
		return nil, gnet.Close // upstreams of this loop not registered yet
	}
	cl := &client{c: c, st: st, up: st.ups[st.next%len(st.ups)]}
	st.next++
	c.SetContext(cl)
	return nil, gnet.None
}

func (p *proxy) OnClose(c gnet.Conn, err error) gnet.Action {
	switch x := c.Context().(type) {
	case *upstream:
		log.Fatal("upstream lost: ", err)
	case *client:
		x.closed = true
		x.st.pool.Put(x.out)
		x.out = nil
	}
	return gnet.None
}

func (p *proxy) OnTraffic(c gnet.Conn) gnet.Action {
	switch x := c.Context().(type) {
	case *client:
		return p.clientTraffic(x)
	case *upstream:
		return p.upstreamTraffic(x)
	}
	return gnet.Close
}

// clientTraffic forwards every complete request buffered for cl; a partial
// one stays in gnet's inbound buffer.
func (p *proxy) clientTraffic(cl *client) gnet.Action {
	n := cl.c.InboundBuffered()
	data, _ := cl.c.Peek(n)
	off, u := 0, cl.up
	for {
		m, fwd, err := wire.Next(data[off:])
		if err != nil {
			return gnet.Close
		}
		if m == 0 {
			break
		}
		if fwd {
			u.q.Push(cl)
		}
		off += m
	}
	if off == 0 {
		return gnet.None
	}
	if p.batch {
		u.out = append(u.out, data[:off]...)
		p.scheduleFlush(u)
	} else if _, err := u.c.Write(data[:off]); err != nil {
		log.Fatal("upstream write: ", err)
	}
	_, _ = cl.c.Discard(off)
	return gnet.None
}

// scheduleFlush notes u as written to and, once per pass, asks the loop to
// run flush after the events it is handling.
func (p *proxy) scheduleFlush(u *upstream) {
	st := u.st
	if len(u.out) > 0 && !containsU(st.dirtyU, u) {
		st.dirtyU = append(st.dirtyU, u)
	}
	if st.queued {
		return
	}
	st.queued = true
	_ = st.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		st.queued = false
		for i, u := range st.dirtyU {
			if _, err := u.c.Write(u.out); err != nil {
				log.Fatal("upstream write: ", err)
			}
			u.out = u.out[:0]
			st.dirtyU[i] = nil
		}
		st.dirtyU = st.dirtyU[:0]
		return nil
	}))
}

func containsU(us []*upstream, u *upstream) bool {
	for _, x := range us {
		if x == u {
			return true
		}
	}
	return false
}

// upstreamTraffic hands each complete reply to the client at the head of
// the FIFO, then writes each touched client once.
func (p *proxy) upstreamTraffic(u *upstream) gnet.Action {
	st := u.st
	n := u.c.InboundBuffered()
	data, _ := u.c.Peek(n)
	off := 0
	for {
		m, err := u.scan.Scan(data[off:])
		if err != nil {
			log.Fatal(err)
		}
		if m == 0 {
			break
		}
		cl, ok := u.q.Pop()
		if !ok {
			log.Fatal("reply without a request")
		}
		if !cl.closed {
			if cl.out == nil {
				cl.out = st.pool.Get()
			}
			cl.out = append(cl.out, data[off:off+m]...)
			if !cl.dirty {
				cl.dirty = true
				st.dirty = append(st.dirty, cl)
			}
		}
		off += m
	}
	_, _ = u.c.Discard(off)
	for i, cl := range st.dirty {
		cl.dirty = false
		if !cl.closed {
			// gnet copies what the socket does not take into the
			// connection's outbound buffer.
			_, _ = cl.c.Write(cl.out)
			st.pool.Put(cl.out)
			cl.out = nil
		}
		st.dirty[i] = nil
	}
	st.dirty = st.dirty[:0]
	return gnet.None
}
