package proxy

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// funnel is a proxy under test, in front of a real redis-server.
type funnel struct {
	Addr    string
	Redis   *redistest.Server
	Server  *Server
	Pool    *pool.Pool
	Metrics *metrics.Metrics
}

// startFunnel starts a redis-server and a funnel in front of it. opts and
// popts adjust the defaults; the test's end shuts both down.
func startFunnel(t testing.TB, opts Options, popts pool.Options) *funnel {
	t.Helper()
	rs := redistest.Start(t)
	return startFunnelFor(t, rs, "redis://"+rs.Addr, opts, popts)
}

func startFunnelFor(t testing.TB, rs *redistest.Server, url string, opts Options, popts pool.Options) *funnel {
	t.Helper()
	up, err := pool.ParseURL(url, pool.TLSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry())
	popts.Metrics = m
	opts.Metrics = m
	p := pool.New(up, popts)
	srv := New(p, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		p.Close(ctx)
		<-served
	})
	return &funnel{Addr: ln.Addr().String(), Redis: rs, Server: srv, Pool: p, Metrics: m}
}

// client returns a go-redis client of the funnel with one connection.
func (f *funnel) client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

// rawConn is a bare RESP connection that returns replies as raw bytes.
type rawConn struct {
	t    testing.TB
	conn net.Conn
	rd   *bufio.Reader
	buf  []byte
	scan resp.ReplyScanner
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, conn: c, rd: bufio.NewReaderSize(c, 64<<10)}
}

// send writes the command made of args.
func (c *rawConn) send(args ...string) {
	c.t.Helper()
	var bargs [][]byte
	for _, a := range args {
		bargs = append(bargs, []byte(a))
	}
	c.write(resp.AppendCommand(nil, bargs...))
}

func (c *rawConn) write(b []byte) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// reply reads one whole raw reply.
func (c *rawConn) reply() string {
	c.t.Helper()
	r, err := c.tryReply(30 * time.Second)
	if err != nil {
		c.t.Fatalf("read reply: %v", err)
	}
	return r
}

func (c *rawConn) tryReply(timeout time.Duration) (string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		n, err := c.scan.Scan(c.buf)
		if err != nil {
			return "", err
		}
		if n > 0 {
			r := string(c.buf[:n])
			c.buf = c.buf[n:]
			return r, nil
		}
		chunk := make([]byte, 64<<10)
		m, err := c.rd.Read(chunk)
		c.buf = append(c.buf, chunk[:m]...)
		if err != nil {
			return "", err
		}
	}
}

// do sends args and returns the raw reply.
func (c *rawConn) do(args ...string) string {
	c.t.Helper()
	c.send(args...)
	return c.reply()
}

func short(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return strings.ReplaceAll(s, "\r\n", "\\r\\n")
}
