package pool

import (
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funnel-proxy/funnel/internal/nbio"
)

// requestWriter is what a connection's writer goroutine flushes requests
// into. It refreshes the write deadline before every write to the socket,
// including the ones bufio makes on its own when its buffer fills: a
// deadline set only before Flush would have long expired on a connection
// that was idle before a burst.
//
// A plain socket is written with a raw system call (see package nbio),
// through RawConn.Write so that a full socket still waits in the
// runtime's poller, under the deadline. TLS is written through nc.
type requestWriter struct {
	nc      net.Conn
	timeout time.Duration
	raw     syscall.RawConn // nil: write nc
	// counted counts the bytes written when raw is used (nc counts its own).
	counted *atomic.Int64

	// The write under way, kept here so that writeFn, made once,
	// allocates nothing per write.
	buf     []byte
	n       int
	err     error
	writeFn func(uintptr) bool
}

func newRequestWriter(nc net.Conn, timeout time.Duration, counted *atomic.Int64) *requestWriter {
	w := &requestWriter{nc: nc, timeout: timeout, raw: rawSocket(nc), counted: counted}
	w.writeFn = w.writeSome
	return w
}

// Write writes all of b, or fails: by the deadline, or as the socket does.
func (w *requestWriter) Write(b []byte) (int, error) {
	_ = w.nc.SetWriteDeadline(time.Now().Add(w.timeout))
	if w.raw == nil {
		return w.nc.Write(b)
	}
	w.buf, w.n, w.err = b, 0, nil
	err := w.raw.Write(w.writeFn)
	n := w.n
	w.buf = nil
	w.counted.Add(int64(n))
	if err == nil {
		err = w.err
	}
	if err != nil {
		return n, rawError(w.nc, "write", err)
	}
	return n, nil
}

// writeSome is RawConn.Write's callback: false means wait until the socket
// takes more.
func (w *requestWriter) writeSome(fd uintptr) bool {
	m, err := nbio.Write(int(fd), w.buf[w.n:])
	w.n += m
	switch err {
	case nil:
	case unix.EAGAIN:
		return false
	default:
		w.err = os.NewSyscallError("write", err)
	}
	return true
}
