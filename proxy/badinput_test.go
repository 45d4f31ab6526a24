package proxy

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// expectClosed reads until the connection ends and fails if it does not
// within a few seconds.
func expectClosed(t *testing.T, c *rawConn) {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c.rd); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed: %v", err)
	}
}

func TestMaxClients(t *testing.T) {
	f := startFunnel(t, Options{MaxClients: 2}, pool.Options{})
	a, b := dialRaw(t, f.Addr), dialRaw(t, f.Addr)
	a.do("PING")
	b.do("PING")
	c := dialRaw(t, f.Addr)
	if got, _ := c.tryReply(5 * time.Second); got != "-ERR max number of clients reached\r\n" {
		t.Fatalf("third client got %q", got)
	}
	expectClosed(t, c)
	if got := a.do("SET", "k", "v"); got != "+OK\r\n" {
		t.Fatalf("first client: %q", got)
	}
	b.do("QUIT")
	expectClosed(t, b)
	deadline := time.Now().Add(5 * time.Second)
	for f.Server.sessionCount() > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := dialRaw(t, f.Addr).do("GET", "k"); got != "$1\r\nv\r\n" {
		t.Fatalf("client after a slot freed: %q", got)
	}
}

// TestMalformedRequests sends each kind of bad input: the sender gets
// Redis's protocol error and is closed; a bystander is unaffected.
func TestMalformedRequests(t *testing.T) {
	limits := resp.Limits{MaxArgs: 100, MaxBulk: 1024, MaxInlineLen: 1024}
	f := startFunnel(t, Options{Limits: limits}, pool.Options{})
	bystander := dialRaw(t, f.Addr)
	bystander.do("SET", "k", "v")
	cases := map[string]string{
		"*1\r\n$x\r\n":                     "-ERR Protocol error: invalid bulk length\r\n",
		"*2\r\n$3\r\nSET\r\n$2000\r\n":     "-ERR Protocol error: invalid bulk length\r\n",
		"*1000\r\n":                        "-ERR Protocol error: invalid multibulk length\r\n",
		"*1\r\n:5\r\n":                     "-ERR Protocol error: expected '$', got ':'\r\n",
		"GET \"unbalanced\r\n":             "-ERR Protocol error: unbalanced quotes in request\r\n",
		strings.Repeat("x", 2000):          "-ERR Protocol error: too big inline request\r\n",
		"*1\r\n$4\r\nPING\r\n*1\r\n$y\r\n": "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
	}
	for in, want := range cases {
		c := dialRaw(t, f.Addr)
		c.write([]byte(in))
		_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c.rd)
		if string(got) != want {
			t.Errorf("%q: got %q, want %q", resp.Quote([]byte(in), 30), got, want)
		}
		if got := bystander.do("GET", "k"); got != "$1\r\nv\r\n" {
			t.Fatalf("bystander: %q", got)
		}
	}
}

func TestInlineCommands(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	c := dialRaw(t, f.Addr)
	c.write([]byte("SET k \"a b\\x41\"\r\nGET k\nPING\r\n\r\nECHO 'it''s'\r\n"))
	for _, want := range []string{"+OK\r\n", "$4\r\na bA\r\n", "+PONG\r\n"} {
		if got := c.reply(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if got := c.reply(); got != "-ERR Protocol error: unbalanced quotes in request\r\n" {
		t.Fatalf("got %q", got)
	}
}

// TestSlowReaderIsCutOff pipelines large GETs and reads nothing: funnel
// closes that client once its held replies pass the output limit, and
// other clients carry on.
func TestSlowReaderIsCutOff(t *testing.T) {
	f := startFunnel(t, Options{ClientOutputLimit: 4 << 20}, pool.Options{})
	other := dialRaw(t, f.Addr)
	other.do("SET", "big", strings.Repeat("v", 256<<10))
	slow := dialRaw(t, f.Addr)
	var burst []byte
	for i := 0; i < 200; i++ {
		burst = resp.AppendCommand(burst, []byte("GET"), []byte("big"))
	}
	slow.write(burst)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(f.Metrics.ClientsClosed.WithLabelValues("output_limit")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("slow client was not closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	expectClosed(t, slow)
	if got := other.do("STRLEN", "big"); got != ":262144\r\n" {
		t.Fatalf("other client: %q", got)
	}
}

// TestDisconnectWithRequestsInFlight closes clients with replies pending;
// the upstream connections must stay in step, so later clients get their
// own replies.
func TestDisconnectWithRequestsInFlight(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 2})
	setup := dialRaw(t, f.Addr)
	setup.do("SET", "big", strings.Repeat("z", 64<<10))
	for round := 0; round < 20; round++ {
		c := dialRaw(t, f.Addr)
		var burst []byte
		for i := 0; i < 300; i++ {
			burst = resp.AppendCommand(burst, []byte("GET"), []byte("big"))
		}
		c.write(burst)
		c.conn.Close()
		check := dialRaw(t, f.Addr)
		if got := check.do("SET", "k", "x"); got != "+OK\r\n" {
			t.Fatalf("round %d SET: %q", round, got)
		}
		if got := check.do("GET", "k"); got != "$1\r\nx\r\n" {
			t.Fatalf("round %d GET: %q", round, got)
		}
	}
}
