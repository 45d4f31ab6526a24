package pool

import (
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/funnel-proxy/funnel/internal/nbio"
)

// replyReader reads an upstream socket for a connection's reader
// goroutine. Reading a socket the usual way (net.Conn.Read) costs, after
// each batch of replies, one more read that finds nothing (EAGAIN) before
// the goroutine parks. With nothing in flight no reply can be on its way,
// so replyReader then waits for the socket to become readable first and
// reads once: at one command at a time that is one system call in nine.
//
// It is safe because the check is made after the runtime's poller was
// reset for this wait (RawConn.Read's prepareRead, before the callback
// runs): a request written after the check is answered by bytes that
// arrive after the reset, and wake the wait. The pool's writer puts a
// request in the in-flight line before writing it.
type replyReader struct {
	nc  net.Conn
	raw syscall.RawConn // nil: read nc (TLS, push connections)
	// counted counts the bytes read when raw is used (nc counts its own).
	counted *atomic.Int64

	// The read under way, kept here so that readFn, made once, allocates
	// nothing per read.
	buf       []byte
	n         int
	err       error
	first     bool
	expecting func() bool
	readFn    func(uintptr) bool
}

func newReplyReader(nc net.Conn, push bool, counted *atomic.Int64) *replyReader {
	r := &replyReader{nc: nc, counted: counted}
	if !push {
		r.raw = rawSocket(nc)
	}
	r.readFn = r.readOnce
	return r
}

// Read reads replies into b. expecting reports whether a reply may be on
// its way; while it does not, Read waits for the socket without reading.
func (r *replyReader) Read(b []byte, expecting func() bool) (int, error) {
	if r.raw == nil {
		return r.nc.Read(b)
	}
	r.buf, r.n, r.err, r.first, r.expecting = b, 0, nil, true, expecting
	err := r.raw.Read(r.readFn)
	n, rerr := r.n, r.err
	r.buf, r.expecting = nil, nil
	switch {
	case err != nil: // the read deadline, or the socket closed (Break)
		return 0, rawError(r.nc, "read", err)
	case rerr != nil:
		return 0, rawError(r.nc, "read", os.NewSyscallError("read", rerr))
	case n == 0:
		return 0, io.EOF
	}
	r.counted.Add(int64(n))
	return n, nil
}

// readOnce is RawConn.Read's callback: false means wait for the socket.
func (r *replyReader) readOnce(fd uintptr) bool {
	if r.first {
		r.first = false
		if !r.expecting() {
			return false
		}
	}
	n, err := nbio.Read(int(fd), r.buf)
	switch err {
	case nil:
		r.n = n
	case unix.EAGAIN:
		return false
	default:
		r.err = err
	}
	return true
}
