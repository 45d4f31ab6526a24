package proxy

import (
	"io"
	"sync/atomic"
)

// countedReader counts the bytes a client sends, per read call rather than
// per byte: one atomic add for each read of the socket
// (funnel_client_read_bytes_total). Written bytes are counted where the
// output writes (see output.writeNow and writeBlocking).
type countedReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countedReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 {
		c.n.Add(int64(n))
	}
	return n, err
}
