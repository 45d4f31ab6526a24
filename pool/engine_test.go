package pool

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// cancelled is a request whose caller gave it up before it was sent.
type cancelled struct{ *result }

func (cancelled) Cancelled() bool { return true }

// TestCancelledRequestIsNotSent: a request its caller cancelled is failed
// with ErrCancelled by the writer and never reaches the upstream.
func TestCancelledRequestIsNotSent(t *testing.T) {
	rs, p := upPool(t, Options{Size: 1})
	r := cancelled{newResult()}
	p.Submit(context.Background(), p.Pick(), &Request{Raw: []byte("*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n"), Done: r})
	if _, err := r.wait(t); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("cancelled request: %v", err)
	}
	if got, _ := rs.Do("GET", "c"); got != "$-1\r\n" {
		t.Fatalf("the cancelled INCR ran: GET c %q", got)
	}
}

// TestLoginIsBilled: the login commands a dial sends count in
// funnel_upstream_commands_total, since the upstream bills them; an
// exclusive connection also asks for its CLIENT ID.
func TestLoginIsBilled(t *testing.T) {
	rs := redistest.Start(t, "--requirepass", "pw")
	m := metrics.New(prometheus.NewRegistry())
	up, err := ParseURL("redis://:pw@"+rs.Addr+"/2", TLSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := New(up, Options{Size: 1, Metrics: m})
	t.Cleanup(func() { p.Close(context.Background()) })
	if _, err := do(t, p, "*1\r\n$4\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	c, err := p.Lane().Borrow(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r := newResult()
	p.Submit(context.Background(), c, &Request{Raw: []byte("*1\r\n$4\r\nPING\r\n"), Done: r})
	if _, err := r.wait(t); err != nil {
		t.Fatal(err)
	}
	if c.UpstreamID() == 0 {
		t.Error("the exclusive connection did not learn its upstream client id")
	}
	p.Lane().Return(c)
	for cmd, want := range map[string]float64{"auth": 2, "select": 2, "client|id": 1} {
		if got := testutil.ToFloat64(m.UpstreamCommands.WithLabelValues(cmd)); got != want {
			t.Errorf("%s billed %v times, want %v", cmd, got, want)
		}
	}
	if got := m.UpstreamTotal.Load(); got != 5 {
		t.Errorf("bill total %d, want 5 (the PINGs were submitted by the test, not counted by the pool)", got)
	}
}

// TestRESP3ExclusiveLoginIsOneCommand: over RESP3 an exclusive connection
// learns its id from the HELLO reply (which also carries AUTH), so its
// login costs one command, and the id is the upstream's own.
func TestRESP3ExclusiveLoginIsOneCommand(t *testing.T) {
	rs := redistest.Start(t, "--requirepass", "pw")
	m := metrics.New(prometheus.NewRegistry())
	up, err := ParseURL("redis://:pw@"+rs.Addr, TLSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	up.Proto = 3
	p := New(up, Options{Size: 1, Metrics: m})
	t.Cleanup(func() { p.Close(context.Background()) })
	c, err := p.Lane().Borrow(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r := newResult()
	p.Submit(context.Background(), c, &Request{Raw: []byte("*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n"), Done: r})
	got, err := r.wait(t)
	if err != nil {
		t.Fatal(err)
	}
	p.Lane().Return(c)
	if want := fmt.Sprintf(":%d\r\n", c.UpstreamID()); c.UpstreamID() == 0 || string(got) != want {
		t.Errorf("id from HELLO %d, CLIENT ID on the connection answered %q", c.UpstreamID(), got)
	}
	if got := m.UpstreamTotal.Load(); got != 1 {
		t.Errorf("login billed %d commands, want 1 (HELLO 3 AUTH)", got)
	}
}

// pushes collects what a push connection reads.
type pushes struct {
	mu    sync.Mutex
	got   []string
	downs int
}

func (h *pushes) Push(raw []byte, _ *Batch) {
	h.mu.Lock()
	h.got = append(h.got, string(raw))
	h.mu.Unlock()
}

func (h *pushes) Down(error) {
	h.mu.Lock()
	h.downs++
	h.mu.Unlock()
}

func (h *pushes) snapshot() ([]string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.got...), h.downs
}

// TestPushConn: a subscriber connection hands every reply to its handler,
// completes requests once written, and reports when it breaks; the next
// request redials.
func TestPushConn(t *testing.T) {
	rs := redistest.Start(t)
	p := newPool(t, "redis://"+rs.Addr, Options{Size: 1})
	h := &pushes{}
	c := p.NewPushConn(h)
	send := func(raw string) {
		t.Helper()
		r := newResult()
		p.Submit(context.Background(), c, &Request{Raw: []byte(raw), Done: r})
		if _, err := r.wait(t); err != nil {
			t.Fatal(err)
		}
	}
	send("*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
	waitFor(t, func() bool { got, _ := h.snapshot(); return len(got) == 1 })
	if _, err := rs.Do("PUBLISH", "ch", "hello"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { got, _ := h.snapshot(); return len(got) == 2 })
	got, _ := h.snapshot()
	if got[0] != "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n" || got[1] != "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n" {
		t.Fatalf("pushes: %q", got)
	}
	// Kill the subscriber connection from the server side.
	if _, err := rs.Do("CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, downs := h.snapshot(); return downs == 1 })
	send("*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
	waitFor(t, func() bool { got, _ := h.snapshot(); return len(got) == 3 })
}

// TestWriteDeadlineRefreshedPerWrite: after the connection sat idle longer
// than the timeout, a burst bigger than the write buffer (so bufio writes
// on its own before Flush) still goes through.
func TestWriteDeadlineRefreshedPerWrite(t *testing.T) {
	_, p := upPool(t, Options{Size: 1, Timeout: 200 * time.Millisecond})
	time.Sleep(400 * time.Millisecond)
	c := p.Pick()
	value := strings.Repeat("v", 1024)
	var rs2 []*result
	for range 200 {
		r := newResult()
		rs2 = append(rs2, r)
		p.Submit(context.Background(), c, &Request{Raw: []byte("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1024\r\n" + value + "\r\n"), Done: r})
	}
	for i, r := range rs2 {
		if got, err := r.wait(t); err != nil || got != "+OK\r\n" {
			t.Fatalf("SET %d after idle: %q %v", i, got, err)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 5s")
}
