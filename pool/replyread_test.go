package pool

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
)

// TestIdleCloseNoticed: with nothing in flight the reader waits for the
// socket without reading it; an upstream that closes the idle connection
// is still noticed at once (the slot goes down without a request), and
// the next request redials.
func TestIdleCloseNoticed(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 1})
	for range 3 { // the reader has been through its wait a few times
		if got, err := do(t, p, "*1\r\n$4\r\nPING\r\n"); err != nil || got != "+PONG\r\n" {
			t.Fatalf("PING: %q %v", got, err)
		}
	}
	c := p.conns[0]
	if _, err := rs.Do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !c.Up() })
	if got, err := do(t, p, "*1\r\n$4\r\nPING\r\n"); err != nil || got != "+PONG\r\n" {
		t.Fatalf("PING after the idle close: %q %v", got, err)
	}
}

// TestReplyTimeoutWhileWaiting: a request written while the reader waits
// without reading still gets the reply timeout when no reply comes.
func TestReplyTimeoutWhileWaiting(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 1, Timeout: 200 * time.Millisecond})
	if _, err := do(t, p, "*1\r\n$4\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Do("CLIENT", "PAUSE", "1000"); err != nil { // Redis answers nobody for 1s
		t.Fatal(err)
	}
	r := newResult()
	start := time.Now()
	p.Submit(context.Background(), p.Pick(), &Request{Raw: []byte("*1\r\n$4\r\nPING\r\n"), Done: r})
	_, err := r.wait(t)
	if err == nil || !strings.Contains(err.Error(), "upstream timeout") {
		t.Fatalf("PING while Redis is paused: %v", err)
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Fatalf("timed out after %v, want about 200ms", d)
	}
}

// TestReplyReaderErrorsReadAsNetConns: a read that fails through the raw
// socket says what net.Conn's would: a deadline is a timeout, and the
// error names the read and the connection.
func TestReplyReaderErrorsReadAsNetConns(t *testing.T) {
	c, _ := tcpPair(t)
	var counted atomic.Int64
	r := newReplyReader(c, false, &counted)
	if r.raw == nil {
		t.Fatal("a TCP connection must be read raw")
	}
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := r.Read(make([]byte, 64), func() bool { return true })
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.HasPrefix(err.Error(), "read tcp ") {
		t.Fatalf("read past the deadline: %v, want a timeout that says read tcp", err)
	}
}
