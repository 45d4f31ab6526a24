package proxy

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus"
)

// outputPair returns a session whose output writes to a loopback TCP
// connection, and the client's end of it. No upstream is ever used.
func outputPair(t *testing.T, opts Options) (*session, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	up, _ := pool.ParseURL("redis://127.0.0.1:1", pool.TLSOptions{})
	m := metrics.New(prometheus.NewRegistry())
	p := pool.New(up, pool.Options{Metrics: m})
	opts.Metrics = m
	srv := New(p, opts)
	srv.mu.Lock()
	s, err := srv.startSessionLocked(server)
	srv.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.kill(closedByClient)
		client.Close()
		_ = srv.Shutdown(t.Context())
		p.Close(t.Context())
	})
	return s, client
}

// queued pushes a request on s's output that completes later with reply.
func queued(s *session) *request {
	r := newReply(s, routeLocal)
	s.out.push(r)
	return r
}

func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(buf)
}

// TestOutputOrder completes requests in reverse order: the client still
// gets the replies in request order, each as soon as all before it are in.
func TestOutputOrder(t *testing.T) {
	s, c := outputPair(t, Options{})
	var rs []*request
	for range 5 {
		rs = append(rs, queued(s))
	}
	for i := 4; i >= 1; i-- {
		rs[i].completeLocal(resp.AppendInt(nil, int64(i)))
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _ := c.Read(make([]byte, 16)); n != 0 {
		t.Fatal("a reply was written before the one ahead of it")
	}
	rs[0].completeLocal(resp.AppendInt(nil, 0))
	if got := readN(t, c, 20); got != ":0\r\n:1\r\n:2\r\n:3\r\n:4\r\n" {
		t.Fatalf("got %q", got)
	}
	if s.out.queued.Load() != 0 {
		t.Fatalf("%d requests left in the queue", s.out.queued.Load())
	}
}

// TestOutputStallsWithoutBlocking fills the client's socket while it does
// not read: completers never wait, the loop watches the socket for room, and
// every reply arrives in order once the client reads, large ones included.
func TestOutputStallsWithoutBlocking(t *testing.T) {
	s, c := outputPair(t, Options{})
	var want bytes.Buffer
	big := resp.AppendBulk(nil, bytes.Repeat([]byte("x"), 1<<20))
	start := time.Now()
	for i := range 64 {
		r := queued(s)
		reply := resp.AppendBulk(nil, bytes.Repeat([]byte{byte('a' + i%26)}, 100<<10))
		if i%8 == 0 {
			reply = big
		}
		want.Write(reply)
		r.completeLocal(reply)
	}
	// A completer that waited for this client would wait for ever (it reads
	// only below); 1 s was exceeded under -race on a loaded machine.
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("completing 64 replies for a client that does not read took %v: a completer waited", d)
	}
	s.sock.mu.Lock()
	watched := s.sock.writing
	s.sock.mu.Unlock()
	if !watched {
		t.Fatal("the loop does not watch the stalled socket for room")
	}
	if got := readN(t, c, want.Len()); got != want.String() {
		t.Fatal("replies arrived out of order or damaged")
	}
}

// TestOutputCloseAfterAndSuppress checks QUIT-style close-after-reply and
// CLIENT REPLY's dropped replies.
func TestOutputCloseAfterAndSuppress(t *testing.T) {
	s, c := outputPair(t, Options{})
	a, b, q, late := queued(s), queued(s), queued(s), queued(s)
	b.suppress = true
	q.closeAfter = closedQuit
	late.completeLocal(resp.AppendStatus(nil, "LATE"))
	b.completeLocal(resp.AppendStatus(nil, "HIDDEN"))
	q.completeLocal(resp.OK)
	a.completeLocal(resp.AppendStatus(nil, "A"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if string(got) != "+A\r\n+OK\r\n" {
		t.Fatalf("got %q, want A then OK, then the close", got)
	}
	select {
	case <-s.dead:
	case <-time.After(5 * time.Second):
		t.Fatal("session not closed after the close-after reply")
	}
	if r := closeReason(s.reason.Load()); r != closedQuit {
		t.Fatalf("closed for %v", r)
	}
}

// TestOutputOrphans shuts the queue with requests still pending: their
// late completions must not touch the client (nor panic), and the
// requests done before are recycled at once.
func TestOutputOrphans(t *testing.T) {
	s, _ := outputPair(t, Options{})
	r1, r2 := queued(s), queued(s)
	r2.completeLocal(resp.OK)
	s.kill(closedByClient)
	s.out.shutQueue()
	r1.Complete([]byte("+LATE\r\n"), nil) // recycled by this completion
	if s.out.queued.Load() != 0 {
		t.Fatalf("%d left queued", s.out.queued.Load())
	}
	r3 := newReply(s, routeLocal)
	if s.out.push(r3) {
		t.Fatal("push after the queue was shut")
	}
}

// TestOutputPushDirect checks that a RESP3 push lands between whole
// replies, never before a pending subscription's confirmation.
func TestOutputPushDirect(t *testing.T) {
	s, c := outputPair(t, Options{})
	var batch pool.Batch
	blocked := queued(s)
	if !s.out.pushDirect([]byte("*1\r\n$1\r\nm\r\n"), &batch) {
		t.Fatal("a push was held back behind a blocked reply")
	}
	batch.Flush()
	if got := readN(t, c, 11); got != ">1\r\n$1\r\nm\r\n" {
		t.Fatalf("got %q", got)
	}
	s.unconfirmedSubs.Add(1)
	if s.out.pushDirect([]byte("*1\r\n$1\r\nn\r\n"), &batch) {
		t.Fatal("a push skipped ahead of an unconfirmed subscription")
	}
	s.unconfirmedSubs.Add(-1)
	blocked.completeLocal(resp.OK)
	if got := readN(t, c, 5); got != "+OK\r\n" {
		t.Fatalf("got %q", got)
	}
}

// TestOutputLimit checks that a client holding more replies than its
// output limit is closed.
func TestOutputLimit(t *testing.T) {
	s, _ := outputPair(t, Options{ClientOutputLimit: 1 << 20})
	head := queued(s) // never completes: everything after it is held
	for range 20 {
		queued(s).completeLocal(resp.AppendBulk(nil, bytes.Repeat([]byte("v"), 100<<10)))
		if s.isDead() {
			if r := closeReason(s.reason.Load()); r != closedOutputLimit {
				t.Fatalf("closed for %v", r)
			}
			head.completeLocal(resp.OK)
			return
		}
	}
	t.Fatalf("not closed with %d bytes held, limit 1 MiB", s.pendingOut.Load())
}

// TestOutputNoLostFlush races completers that only collect replies (as in a
// batch) against completers that want them written: every reply a
// completer wanted written must reach the client without any later kick.
func TestOutputNoLostFlush(t *testing.T) {
	s, c := outputPair(t, Options{})
	stop := make(chan struct{})
	collected := make(chan struct{})
	go func() { // a batch collector: never asks for a write
		defer close(collected)
		for {
			select {
			case <-stop:
				return
			default:
				s.out.kick(false)
			}
		}
	}()
	const n = 2000
	for range n {
		r := queued(s)
		r.view = resp.OK
		r.state.Store(done)
		s.out.kick(true)
	}
	close(stop)
	<-collected
	if got := readN(t, c, n*len(resp.OK)); got != strings.Repeat(string(resp.OK), n) {
		t.Fatal("replies damaged")
	}
}
