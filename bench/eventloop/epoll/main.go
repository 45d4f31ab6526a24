// Command epoll is a minimal RESP forwarding proxy on its own epoll loops,
// built to measure that design against gnet and funnel's goroutine per
// connection (see ../README.md). It is a benchmark prototype, not a proxy:
// no commands are interpreted, no TLS, no unix sockets, no auth.
//
// Each loop (-procs of them, one OS thread each) owns a SO_REUSEPORT
// listener, its clients and -upstreams connections to Redis. A poll pass
// reads every ready socket, appends each complete request to its client's
// upstream connection and each complete reply to its client's output, then
// writes each touched upstream once and each touched client once.
// Level-triggered; a read that does not fill the buffer is taken to have
// drained the socket (epoll reports it again if more arrives), which saves
// the read that would only return EAGAIN.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/funnel-proxy/funnel/bench/eventloop/internal/wire"
	"github.com/funnel-proxy/funnel/resp"
	"golang.org/x/sys/unix"
)

const (
	readBuf   = 64 << 10 // a loop's shared read buffer
	poolBuf   = 16 << 10 // a connection's buffer while it holds data
	outLimit  = 1 << 20  // replies held for a client before it is not read
	maxEvents = 512
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7400", "address to listen on")
	upstream := flag.String("upstream", "127.0.0.1:6379", "Redis address")
	procs := flag.Int("procs", 1, "event loops (each on its own OS thread)")
	ups := flag.Int("upstreams", 2, "upstream connections per loop")
	gmp := flag.Int("gomaxprocs", 0, "GOMAXPROCS; 0: Go's default")
	flag.StringVar(&waitMode, "wait", "raw", "how a loop blocks in epoll_wait: raw (RawSyscall, keeps its P) or go (unix.EpollWait, a blocking syscall the scheduler sees)")
	flag.Parse()
	if waitMode != "raw" && waitMode != "go" {
		log.Fatal("-wait: raw or go")
	}
	if *gmp > 0 {
		runtime.GOMAXPROCS(*gmp)
	}
	laddr, err := net.ResolveTCPAddr("tcp4", *listen)
	if err != nil {
		log.Fatal(err)
	}
	uaddr, err := net.ResolveTCPAddr("tcp4", *upstream)
	if err != nil {
		log.Fatal(err)
	}
	for i := 0; i < *procs; i++ {
		l, err := newLoop(laddr, uaddr, *ups)
		if err != nil {
			log.Fatal(err)
		}
		go l.run()
	}
	fmt.Fprintf(os.Stderr, "epoll proxy on %s -> %s, %d loops x %d upstreams\n", *listen, *upstream, *procs, *ups)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

// client is one accepted connection. It holds a buffer only while it has a
// partial request (in) or replies not yet written (out).
type client struct {
	fd     int
	up     *upstream
	in     []byte
	out    []byte
	outOff int
	events uint32
	dirty  bool
	closed bool
}

// upstream is one connection to Redis; q holds, in order, the client of
// each request written to it whose reply has not come back.
type upstream struct {
	fd     int
	out    []byte
	outOff int
	in     []byte
	scan   resp.ReplyScanner
	q      wire.Queue[*client]
	events uint32
	dirty  bool
}

// waitMode is -wait.
var waitMode string

// epollWait blocks until events arrive. In raw mode it does so without
// telling the scheduler (RawSyscall6): the loop's thread keeps its P, so
// there is no sysmon hand-off of the P, no futex wake-up to get it back and
// no extra thread spinning for work each time the loop sleeps. That is safe
// because the thread is locked and the runtime's preemption signal (SIGURG)
// interrupts the wait with EINTR, after which the loop yields.
func epollWait(epfd int, events []unix.EpollEvent) (int, error) {
	if waitMode == "go" {
		return unix.EpollWait(epfd, events, -1)
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), ^uintptr(0), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

type loop struct {
	epfd, lfd int
	clients   []*client   // by fd
	upByFd    []*upstream // by fd
	ups       []*upstream
	next      int
	rbuf      []byte
	pool      *wire.Pool
	dirtyC    []*client
	dirtyU    []*upstream
}

func newLoop(laddr, uaddr *net.TCPAddr, nups int) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	l := &loop{epfd: epfd, rbuf: make([]byte, readBuf), pool: wire.NewPool(poolBuf)}
	l.lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	_ = unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	if err := unix.Bind(l.lfd, sockaddr(laddr)); err != nil {
		return nil, fmt.Errorf("bind %s: %w", laddr, err)
	}
	if err := unix.Listen(l.lfd, 4096); err != nil {
		return nil, err
	}
	if err := l.ctl(unix.EPOLL_CTL_ADD, l.lfd, unix.EPOLLIN); err != nil {
		return nil, err
	}
	for i := 0; i < nups; i++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		if err := unix.Connect(fd, sockaddr(uaddr)); err != nil {
			return nil, fmt.Errorf("connect %s: %w", uaddr, err)
		}
		_ = unix.SetNonblock(fd, true)
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		u := &upstream{fd: fd, events: unix.EPOLLIN, in: make([]byte, 0, readBuf)}
		if err := l.ctl(unix.EPOLL_CTL_ADD, fd, u.events); err != nil {
			return nil, err
		}
		for len(l.upByFd) <= fd {
			l.upByFd = append(l.upByFd, nil)
		}
		l.upByFd[fd] = u
		l.ups = append(l.ups, u)
	}
	return l, nil
}

func sockaddr(a *net.TCPAddr) *unix.SockaddrInet4 {
	sa := &unix.SockaddrInet4{Port: a.Port}
	copy(sa.Addr[:], a.IP.To4())
	return sa
}

func (l *loop) ctl(op, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	return unix.EpollCtl(l.epfd, op, fd, &ev)
}

func (l *loop) run() {
	runtime.LockOSThread()
	events := make([]unix.EpollEvent, maxEvents)
	for {
		n, err := epollWait(l.epfd, events)
		if err != nil {
			if err == unix.EINTR {
				runtime.Gosched() // let a stop-the-world or preemption through
				continue
			}
			log.Fatal("epoll_wait: ", err)
		}
		for i := 0; i < n; i++ {
			ev := &events[i]
			fd := int(ev.Fd)
			switch {
			case fd == l.lfd:
				l.accept()
			case fd < len(l.clients) && l.clients[fd] != nil:
				c := l.clients[fd]
				if ev.Events&unix.EPOLLOUT != 0 {
					l.flushClient(c)
				}
				if !c.closed && ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && c.events&unix.EPOLLIN != 0 {
					l.readClient(c)
				}
			case fd < len(l.upByFd) && l.upByFd[fd] != nil:
				u := l.upByFd[fd]
				if ev.Events&unix.EPOLLOUT != 0 {
					l.flushUpstream(u)
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
					l.readUpstream(u)
				}
			}
		}
		// One write per touched upstream, then one per touched client.
		for _, u := range l.dirtyU {
			u.dirty = false
			l.flushUpstream(u)
		}
		l.dirtyU = l.dirtyU[:0]
		for i, c := range l.dirtyC {
			c.dirty = false
			if !c.closed {
				l.flushClient(c)
			}
			l.dirtyC[i] = nil
		}
		l.dirtyC = l.dirtyC[:0]
	}
}

func (l *loop) accept() {
	for {
		fd, _, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			if err != unix.EAGAIN && err != unix.ECONNABORTED {
				log.Print("accept: ", err)
			}
			return
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &client{fd: fd, up: l.ups[l.next%len(l.ups)], events: unix.EPOLLIN}
		l.next++
		if err := l.ctl(unix.EPOLL_CTL_ADD, fd, c.events); err != nil {
			_ = unix.Close(fd)
			continue
		}
		for len(l.clients) <= fd {
			l.clients = append(l.clients, make([]*client, fd+1-len(l.clients))...)
		}
		l.clients[fd] = c
	}
}

func (l *loop) closeClient(c *client) {
	if c.closed {
		return
	}
	c.closed = true
	l.clients[c.fd] = nil
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	_ = unix.Close(c.fd)
	l.pool.Put(c.in)
	l.pool.Put(c.out)
	c.in, c.out = nil, nil
}

// readClient reads what c sent, queues each complete request on c's
// upstream and keeps a partial one in a pooled buffer.
func (l *loop) readClient(c *client) {
	for {
		var buf []byte
		if c.in != nil {
			if cap(c.in)-len(c.in) < 4096 {
				grown := make([]byte, len(c.in), 2*cap(c.in))
				copy(grown, c.in)
				l.pool.Put(c.in)
				c.in = grown
			}
			buf = c.in[len(c.in):cap(c.in)]
		} else {
			buf = l.rbuf
		}
		n, err := unix.Read(c.fd, buf)
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 {
			l.closeClient(c)
			return
		}
		var data []byte
		if c.in != nil {
			c.in = c.in[:len(c.in)+n]
			data = c.in
		} else {
			data = l.rbuf[:n]
		}
		off, u := 0, c.up
		for {
			m, fwd, err := wire.Next(data[off:])
			if err != nil {
				l.closeClient(c)
				return
			}
			if m == 0 {
				break
			}
			if fwd {
				u.out = append(u.out, data[off:off+m]...)
				u.q.Push(c)
			}
			off += m
		}
		if off > 0 && !u.dirty {
			u.dirty = true
			l.dirtyU = append(l.dirtyU, u)
		}
		rest := data[off:]
		switch {
		case c.in != nil && len(rest) == 0:
			l.pool.Put(c.in)
			c.in = nil
		case c.in != nil:
			c.in = c.in[:copy(c.in, rest)]
		case len(rest) > 0:
			c.in = append(l.pool.Get(), rest...)
		}
		if n < len(buf) {
			return
		}
	}
}

// readUpstream reads replies and hands each to the client at the head of
// the queue.
func (l *loop) readUpstream(u *upstream) {
	for {
		if cap(u.in)-len(u.in) < 16<<10 {
			grown := make([]byte, len(u.in), 2*cap(u.in)+readBuf)
			copy(grown, u.in)
			u.in = grown
		}
		buf := u.in[len(u.in):cap(u.in)]
		n, err := unix.Read(u.fd, buf)
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 {
			log.Fatal("upstream lost: ", err)
		}
		u.in = u.in[:len(u.in)+n]
		off := 0
		for {
			m, err := u.scan.Scan(u.in[off:])
			if err != nil {
				log.Fatal(err)
			}
			if m == 0 {
				break
			}
			c, ok := u.q.Pop()
			if !ok {
				log.Fatal("reply without a request")
			}
			if !c.closed {
				if c.out == nil {
					c.out = l.pool.Get()
				}
				c.out = append(c.out, u.in[off:off+m]...)
				if !c.dirty {
					c.dirty = true
					l.dirtyC = append(l.dirtyC, c)
				}
			}
			off += m
		}
		u.in = u.in[:copy(u.in, u.in[off:])]
		if n < len(buf) {
			return
		}
	}
}

func (l *loop) flushUpstream(u *upstream) {
	for u.outOff < len(u.out) {
		n, err := unix.Write(u.fd, u.out[u.outOff:])
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			log.Fatal("upstream write: ", err)
		}
		u.outOff += n
	}
	want := uint32(unix.EPOLLIN)
	if u.outOff == len(u.out) {
		u.out, u.outOff = u.out[:0], 0
	} else {
		want |= unix.EPOLLOUT
	}
	if want != u.events {
		u.events = want
		_ = l.ctl(unix.EPOLL_CTL_MOD, u.fd, want)
	}
}

// flushClient writes c's replies. While more than outLimit bytes wait on a
// client that does not read, the loop stops reading its requests.
func (l *loop) flushClient(c *client) {
	for c.outOff < len(c.out) {
		n, err := unix.Write(c.fd, c.out[c.outOff:])
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			l.closeClient(c)
			return
		}
		c.outOff += n
	}
	want := uint32(unix.EPOLLIN)
	if c.outOff == len(c.out) {
		l.pool.Put(c.out)
		c.out, c.outOff = nil, 0
	} else {
		want = unix.EPOLLOUT
		if len(c.out)-c.outOff < outLimit {
			want |= unix.EPOLLIN
		}
	}
	if want != c.events {
		c.events = want
		_ = l.ctl(unix.EPOLL_CTL_MOD, c.fd, want)
	}
}
