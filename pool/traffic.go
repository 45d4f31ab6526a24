package pool

import (
	"net"
	"sync/atomic"
)

// countedConn counts the bytes of each read and write of an upstream
// connection: one atomic add per call, not per byte. It counts what RESP
// travels (TLS is below it), the login included.
type countedConn struct {
	net.Conn
	read, written *atomic.Int64
}

func (c countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.read.Add(int64(n))
	}
	return n, err
}

func (c countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.written.Add(int64(n))
	}
	return n, err
}

// counted wraps a new upstream connection so that its traffic is counted
// in funnel_upstream_read_bytes_total and funnel_upstream_written_bytes_total.
func (p *Pool) counted(nc net.Conn) net.Conn {
	return countedConn{Conn: nc, read: &p.metrics.UpstreamRead, written: &p.metrics.UpstreamWritten}
}
