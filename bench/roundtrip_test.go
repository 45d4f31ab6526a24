// Package bench holds funnel's benchmarks and workload tools. Targets live
// here, never in unit tests; bench/README.md has the numbers and commands.
package bench

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// startFunnel runs a funnel in this process in front of rs.
func startFunnel(b *testing.B, rs *redistest.Server) string {
	b.Helper()
	up, err := pool.ParseURL("redis://"+rs.Addr, pool.TLSOptions{})
	if err != nil {
		b.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry())
	p := pool.New(up, pool.Options{Metrics: m})
	srv := proxy.New(p, proxy.Options{Metrics: m})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		p.Close(ctx)
	})
	return ln.Addr().String()
}

var getCmd = []byte("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n")

// roundTrips sends GET and waits for the reply, once per iteration, on one
// connection per parallel goroutine.
func roundTrips(b *testing.B, addr string) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		rd := bufio.NewReader(c)
		for pb.Next() {
			if _, err := c.Write(getCmd); err != nil {
				b.Error(err)
				return
			}
			if line, err := rd.ReadSlice('\n'); err != nil || line[0] != '$' {
				b.Errorf("reply %q: %v", line, err)
				return
			}
			if _, err := rd.Discard(7); err != nil { // "value\r\n"
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRoundTrip compares a GET round trip direct to redis-server with
// one through funnel. allocs/op counts funnel's allocations too, since it
// runs in this process.
func BenchmarkRoundTrip(b *testing.B) {
	rs := redistest.Start(b)
	if reply, err := rs.Do("SET", "key", "value"); err != nil || reply != "+OK\r\n" {
		b.Fatal(reply, err)
	}
	b.Run("direct", func(b *testing.B) { roundTrips(b, rs.Addr) })
	b.Run("funnel", func(b *testing.B) { roundTrips(b, startFunnel(b, rs)) })
}
