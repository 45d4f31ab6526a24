// Package bench holds funnel's benchmarks and workload tools. Targets live
// here, never in unit tests; bench/README.md has the numbers and commands.
package bench

import (
	"bufio"
	"net"
	"testing"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/proxy"
)

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
// one through funnel, with coalescing (the default: every GET is a flight
// others could join) and without. allocs/op counts funnel's allocations
// too, since it runs in this process.
func BenchmarkRoundTrip(b *testing.B) {
	rs := redistest.Start(b)
	if reply, err := rs.Do("SET", "key", "value"); err != nil || reply != "+OK\r\n" {
		b.Fatal(reply, err)
	}
	b.Run("direct", func(b *testing.B) { roundTrips(b, rs.Addr) })
	b.Run("funnel", func(b *testing.B) { roundTrips(b, funneltest.Start(b, rs, proxy.Options{}, pool.Options{})) })
	b.Run("funnel-nocoalesce", func(b *testing.B) {
		roundTrips(b, funneltest.Start(b, rs, proxy.Options{DisableCoalesce: true}, pool.Options{}))
	})
}
