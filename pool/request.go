package pool

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrClosed is returned for requests made after the pool was closed.
var ErrClosed = errors.New("pool: closed")

// ErrCancelled is returned for a request whose caller gave it up before it
// was written (a departed client's read or blocking command).
var ErrCancelled = errors.New("pool: cancelled before it was sent")

// ErrorKind says what went wrong with a request, for the client's error text
// and for the errors metric.
type ErrorKind uint8

// Error kinds.
const (
	Unavailable ErrorKind = iota // the upstream could not be dialed or logged in to
	Lost                         // the connection broke with the request on it
	Timeout                      // no reply within the reply timeout
	Protocol                     // the upstream sent something that is not RESP
	Closed                       // funnel is shutting down, or the caller cancelled
)

// String is the kind's metric label.
func (k ErrorKind) String() string {
	switch k {
	case Unavailable:
		return "upstream_unavailable"
	case Lost:
		return "upstream_lost"
	case Timeout:
		return "upstream_timeout"
	case Protocol:
		return "upstream_protocol"
	default:
		return "upstream_closed"
	}
}

// Error is a failure funnel reports to a client in place of a reply. Its
// text starts with "funnel:" and says what happened.
type Error struct {
	Kind ErrorKind
	Err  error
}

func (e *Error) Error() string {
	switch e.Kind {
	case Unavailable:
		return fmt.Sprintf("funnel: upstream unavailable (%v)", e.Err)
	case Lost:
		return fmt.Sprintf("funnel: upstream connection lost (%v); the command may or may not have run", e.Err)
	case Timeout:
		return fmt.Sprintf("funnel: upstream timeout (%v); the command may or may not have run", e.Err)
	case Protocol:
		return fmt.Sprintf("funnel: upstream protocol error (%v)", e.Err)
	default:
		if errors.Is(e.Err, ErrCancelled) {
			return "funnel: command cancelled: its client went away before it was sent"
		}
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

// Canceller is a Completer that may give its request up: the writer asks
// just before writing it, and a cancelled request is completed with
// ErrCancelled instead of being sent.
type Canceller interface {
	Cancelled() bool
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
	// reply is delivered; a MULTI ... EXEC batch wants EXEC's. On a push
	// connection (see NewPushConn) replies are not matched to requests and
	// a request completes, with no reply, once written.
	Replies int
	// Timeout, when longer than the pool's reply timeout, is how long this
	// request's reply may take (a blocking command's own timeout plus a
	// margin); NoTimeout means it may wait for ever (BLPOP ... 0).
	Timeout time.Duration
	// Done is told the outcome.
	Done Completer
	// Duration, when set, observes the seconds from writing Raw to reading
	// its last reply (funnel_upstream_duration_seconds).
	Duration prometheus.Observer
	// ReplySize is how many bytes the reply is expected to bring (its
	// client's average), or 0 when not known. With Raw it weighs the request
	// on its connection, so that Pick sends no new client behind a
	// transfer of many bytes (see pipelineWeight).
	ReplySize int64
	// weight is what r adds to its connection's load until it completes.
	weight int64
	// writtenAt is when the writer wrote Raw, if Duration is set; the reader
	// reads it only after sent is set.
	writtenAt time.Time

	// sent is set by the writer once it no longer reads Raw. The reader
	// completes a request only after that: the reply cannot come before the
	// bytes went out, but the socket gives no happens-before edge, and the
	// completer may reuse Raw at once.
	sent atomic.Bool
	// lineNext links r in the line it is in (see line).
	lineNext *Request
}

// NoTimeout is a Request.Timeout for a reply that may never come on its own.
const NoTimeout time.Duration = -1

func (r *Request) replies() int {
	if r.Replies < 1 {
		return 1
	}
	return r.Replies
}

// weigh sets what r weighs on a connection: requestWeight for each of its
// commands, and the bytes it sends and is expected to bring back.
func (r *Request) weigh() int64 {
	r.weight = int64(r.replies())*requestWeight + int64(len(r.Raw)) + max(r.ReplySize, 0)
	return r.weight
}

func (r *Request) cancelled() bool {
	c, ok := r.Done.(Canceller)
	return ok && c.Cancelled()
}

// awaitSent returns once the writer is done with r.Raw. By the time r's
// reply is read that is almost always so already; otherwise the writer is
// a few instructions from it.
func (r *Request) awaitSent() {
	for !r.sent.Load() {
		runtime.Gosched()
	}
}
