package pool

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
)

// ErrClosed is returned for requests made after the pool was closed.
var ErrClosed = errors.New("pool: closed")

// Error is a failure funnel reports to a client in place of a reply. Its
// text starts with "funnel:" and says what happened; Kind names it for
// metrics.
type Error struct {
	Kind string // "unavailable", "lost", "timeout", "protocol", "closed"
	Err  error
}

func (e *Error) Error() string {
	switch e.Kind {
	case "unavailable":
		return fmt.Sprintf("funnel: upstream unavailable (%v)", e.Err)
	case "lost":
		return fmt.Sprintf("funnel: upstream connection lost (%v); the command may or may not have run", e.Err)
	case "timeout":
		return fmt.Sprintf("funnel: upstream timeout (%v); the command may or may not have run", e.Err)
	case "protocol":
		return fmt.Sprintf("funnel: upstream protocol error (%v)", e.Err)
	default:
		return fmt.Sprintf("funnel: proxy shutting down (%v)", e.Err)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// Completer receives the outcome of a request, exactly once, from a pool
// goroutine. The reply slice is only valid during the call: copy what you
// keep. Complete must not block.
type Completer interface {
	Complete(reply []byte, err error)
}

// Flusher sends on what completions left buffered.
type Flusher interface {
	Flush()
}

// BatchCompleter is a Completer that can leave what a completion produces
// buffered. A connection's reader completes each request whose reply it
// read with CompleteBatched, which adds to batch whatever must be flushed;
// once the reader has no whole reply left in hand (before it waits for more
// bytes) it calls Flush on each. Replies to many requests read at once then
// reach their clients in few writes.
type BatchCompleter interface {
	Completer
	CompleteBatched(reply []byte, err error, batch *Batch)
}

// Batch collects the Flushers of the completions made from one read.
type Batch struct {
	flushers []Flusher
}

// Add records f, once if it comes several times in a row.
func (b *Batch) Add(f Flusher) {
	if n := len(b.flushers); n == 0 || b.flushers[n-1] != f {
		b.flushers = append(b.flushers, f)
	}
}

// Flush calls every Flusher added, and empties b.
func (b *Batch) Flush() {
	for i, f := range b.flushers {
		f.Flush()
		b.flushers[i] = nil
	}
	b.flushers = b.flushers[:0]
}

// Request is work for one upstream connection.
type Request struct {
	// Raw holds one or more RESP commands, written as they are.
	Raw []byte
	// Replies is how many replies Raw produces (0 means 1). Only the last
	// reply is delivered; a MULTI ... EXEC batch wants EXEC's.
	Replies int
	// Timeout, when longer than the pool's reply timeout, is how long this
	// request's reply may take (a blocking command's own timeout plus a
	// margin); NoTimeout means it may wait for ever (BLPOP ... 0).
	Timeout time.Duration
	// Done is told the outcome.
	Done Completer

	// sent is set by the writer once it no longer reads Raw. The reader
	// completes a request only after that: the reply cannot come before the
	// bytes went out, but the socket gives no happens-before edge, and the
	// completer may reuse Raw at once.
	sent atomic.Bool
}

// NoTimeout is a Request.Timeout for a reply that may never come on its own.
const NoTimeout time.Duration = -1

func (r *Request) replies() int {
	if r.Replies < 1 {
		return 1
	}
	return r.Replies
}

// awaitSent returns once the writer is done with r.Raw. By the time r's
// reply is read that is almost always so already; otherwise the writer is
// a few instructions from it.
func (r *Request) awaitSent() {
	for !r.sent.Load() {
		runtime.Gosched()
	}
}
