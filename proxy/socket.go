package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funnel-proxy/funnel/internal/nbio"
)

// clientSocket is a client's connection as funnel holds it: the socket's
// own descriptor, taken out of the Go runtime's poller, read by the
// client's loop and written by whoever completes a reply (output.go),
// never waiting.
type clientSocket struct {
	fd   int
	loop *loop
	// readBytes counts what clients send (funnel_client_read_bytes_total).
	readBytes *atomic.Int64
	// reads is how many more reads of the socket the loop allows in this
	// pass; Read says errWouldBlock after them. Owned by the loop.
	reads int
	// readAt is when the last read returned: the time every command it
	// brought was read, one clock read per batch. Owned by the loop.
	readAt time.Time
	// more is set when the last read filled its buffer: the socket may
	// hold more, and the edge-triggered set will not report it again, so
	// the loop reads it again next pass (loop.again). againQueued is set
	// while it is in that list. Owned by the loop.
	more, againQueued bool
	// readPass is the loop pass that last handled an event of the socket.
	// Owned by the loop.
	readPass uint64
	// peerClosed is set once the set reported the client's hang-up
	// (EPOLLRDHUP): edge-triggered, that is said once, and a read that
	// comes back short still leaves the end of the stream to read, so
	// the loop reads the socket again until it does. Owned by the loop.
	peerClosed bool

	// mu guards what the loop watches the socket for, and its close, so a
	// watch change never reaches a descriptor number reused by another
	// client.
	mu               sync.Mutex
	reading, writing bool
	closed           bool
}

// errWouldBlock ends a read the socket has nothing more for now.
var errWouldBlock = errors.New("funnel: would block")

// takeSocket returns a descriptor of conn's socket that funnel owns, and
// closes conn: the runtime's poller then no longer watches the socket, so
// data arriving wakes only the loop.
func takeSocket(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, errors.New("funnel: the listener's connections have no socket to watch")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) {
		fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, os.NewSyscallError("fcntl", dupErr)
	}
	// The duplicate shares the socket and its O_NONBLOCK; closing conn
	// only takes the original out of the runtime's poller.
	conn.Close()
	return fd, nil
}

// register adds the socket to its loop's set, for reading.
func (c *clientSocket) register() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reading = true
	ev := unix.EpollEvent{Events: c.events(), Fd: int32(c.fd)}
	return unix.EpollCtl(c.loop.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev)
}

// events is the watch: commands while reading; else only the client's
// hang-up (a paused or draining client that leaves is noticed at once).
// It is edge-triggered, so a socket the loop has seen leaves the set's
// ready list and the loop can park right after a pass (see loop.pass);
// a watch change re-arms it, reporting what is pending then.
func (c *clientSocket) events() uint32 {
	e := uint32(unix.EPOLLRDHUP | unix.EPOLLET)
	if c.reading {
		e = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET
	}
	if c.writing {
		e |= unix.EPOLLOUT
	}
	return e
}

// setReading and setWriting change what the loop waits for on the socket,
// each under mu with the other's state, so the loop pausing a client and a
// completer finding its socket full never undo each other's change.
// Hang-ups and errors are always reported.
func (c *clientSocket) setReading(on bool) { c.setWatch(&c.reading, on) }

func (c *clientSocket) setWriting(on bool) { c.setWatch(&c.writing, on) }

// setWatch sets one of reading and writing and tells the kernel.
func (c *clientSocket) setWatch(flag *bool, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *flag == on {
		return
	}
	*flag = on
	if c.closed {
		return
	}
	ev := unix.EpollEvent{Events: c.events(), Fd: int32(c.fd)}
	_ = unix.EpollCtl(c.loop.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
}

// shutdown ends the connection both ways without closing the descriptor:
// the client sees EOF, and the loop a hang-up. Any goroutine may call it.
func (c *clientSocket) shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

// close closes the descriptor, once; only the loop calls it. It holds the
// output's lock, so no reply write is under way.
func (c *clientSocket) close(o *output) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.closed = true
	_ = unix.EpollCtl(c.loop.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	unix.Close(c.fd)
	return true
}

// readsPerPass is how many times a pass of the loop reads one client: once,
// one buffer, so a client that never stops sending cannot keep the loop
// from the others. What a full read left is read next pass (loop.again).
const readsPerPass = 1

// startPass gives the socket its reads for this pass of the loop.
func (c *clientSocket) startPass() { c.reads = readsPerPass }

// Read reads the socket for the request reader, at most c.reads times in
// a pass (startPass): errWouldBlock when the pass's reads are used up, the last one
// came back short (the socket is drained; if more came since, the set
// reports it), or nothing is there.
func (c *clientSocket) Read(b []byte) (int, error) {
	if c.reads <= 0 {
		return 0, errWouldBlock
	}
	n, err := c.read(b)
	if n > 0 {
		c.readAt = time.Now()
		c.readBytes.Add(int64(n))
		if c.reads--; n < len(b) {
			c.reads = 0
		}
	}
	return n, err
}

// read is one read of the socket: EOF when the client hung up,
// errWouldBlock when nothing is there. It sets more.
func (c *clientSocket) read(b []byte) (int, error) {
	c.more = false
	n, err := nbio.Read(c.fd, b)
	switch {
	case n > 0:
		c.more = n == len(b)
		return n, nil
	case err == unix.EAGAIN:
		c.reads = 0
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	}
	return 0, io.EOF
}

// write writes as much of b as the socket takes without waiting.
func (c *clientSocket) write(b []byte) (int, error) {
	n, err := nbio.Write(c.fd, b)
	if err == unix.EAGAIN {
		err = nil // full
	}
	return n, err
}
