// Package wire holds what the event-loop prototypes share: a stateless
// scanner that finds where a client's RESP request ends, a FIFO of waiting
// replies and a free list of buffers owned by one loop.
package wire

import (
	"bytes"
	"errors"
)

// ErrRequest means the client sent bytes that are not a RESP request.
var ErrRequest = errors.New("wire: bad request")

// maxInline bounds an inline command or a multibulk header line.
const maxInline = 64 << 10

// Next returns the length of the first complete request in b, or 0 when b
// does not hold all of it yet. forward is false for an empty inline line,
// which Redis skips without a reply (so it must not be queued for one). It
// rescans from the start on every call, which is cheap for the short
// requests these prototypes see.
func Next(b []byte) (n int, forward bool, err error) {
	if len(b) == 0 {
		return 0, false, nil
	}
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		if len(b) > maxInline {
			return 0, false, ErrRequest
		}
		return 0, false, nil
	}
	if b[0] != '*' {
		line := bytes.TrimSpace(b[:nl])
		return nl + 1, len(line) > 0, nil
	}
	count, ok := parseLen(b[1:nl])
	if !ok {
		return 0, false, ErrRequest
	}
	pos := nl + 1
	for i := 0; i < count; i++ {
		if pos >= len(b) {
			return 0, false, nil
		}
		if b[pos] != '$' {
			return 0, false, ErrRequest
		}
		nl := bytes.IndexByte(b[pos:], '\n')
		if nl < 0 {
			if len(b)-pos > maxInline {
				return 0, false, ErrRequest
			}
			return 0, false, nil
		}
		size, ok := parseLen(b[pos+1 : pos+nl])
		if !ok {
			return 0, false, ErrRequest
		}
		pos += nl + 1 + size + 2
		if pos > len(b) {
			return 0, false, nil
		}
	}
	return pos, count > 0, nil
}

// parseLen parses the decimal before a header's CR.
func parseLen(b []byte) (int, bool) {
	if len(b) < 2 || b[len(b)-1] != '\r' {
		return 0, false
	}
	b = b[:len(b)-1]
	if len(b) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// Queue is a FIFO of the clients waiting for replies on one upstream
// connection, in the order their requests were written to it.
type Queue[T any] struct {
	items []T
	head  int
}

// Push appends v.
func (q *Queue[T]) Push(v T) { q.items = append(q.items, v) }

// Len is the number of waiting entries.
func (q *Queue[T]) Len() int { return len(q.items) - q.head }

// Pop removes and returns the oldest entry; ok is false when q is empty.
func (q *Queue[T]) Pop() (v T, ok bool) {
	if q.head == len(q.items) {
		return v, false
	}
	var zero T
	v = q.items[q.head]
	q.items[q.head] = zero
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head > 1024 && q.head*2 > len(q.items) {
		n := copy(q.items, q.items[q.head:])
		q.items, q.head = q.items[:n], 0
	}
	return v, true
}

// Pool is a free list of byte buffers for one event loop (not safe for
// concurrent use). A connection takes a buffer only while it holds a partial
// request or unwritten replies and gives it back once empty, so an idle
// connection holds none.
type Pool struct {
	free [][]byte
	size int
}

// NewPool returns a pool of buffers of capacity size.
func NewPool(size int) *Pool { return &Pool{size: size} }

// Get returns an empty buffer.
func (p *Pool) Get() []byte {
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	return make([]byte, 0, p.size)
}

// Put returns b to the pool; buffers that grew well beyond the pool's size,
// and any beyond 256 free ones, are left to the garbage collector.
func (p *Pool) Put(b []byte) {
	if b == nil || cap(b) > 4*p.size || len(p.free) >= 256 {
		return
	}
	p.free = append(p.free, b[:0])
}
