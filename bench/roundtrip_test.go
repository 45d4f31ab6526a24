// Package bench holds funnel's benchmarks and workload tools. Targets live
// here, never in unit tests; bench/README.md has the numbers and commands.
package bench

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/proxy"
)

var (
	getCmd = []byte("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n")
	setCmd = []byte("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n")
)

// roundTrips sends cmd (GET key, or SET key value) and reads its reply
// ("$5\r\nvalue\r\n" or "+OK\r\n"), once per iteration, on one connection
// per parallel goroutine.
func roundTrips(b *testing.B, addr string, cmd []byte) {
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
			if _, err := c.Write(cmd); err != nil {
				b.Error(err)
				return
			}
			line, err := rd.ReadSlice('\n')
			if err != nil || (line[0] != '$' && line[0] != '+') {
				b.Errorf("reply %q: %v", line, err)
				return
			}
			if line[0] == '$' {
				if _, err := rd.Discard(7); err != nil { // "value\r\n"
					b.Error(err)
					return
				}
			}
		}
	})
}

// BenchmarkRoundTrip compares GET and SET round trips direct to
// redis-server with ones through funnel, with coalescing (the default:
// every GET is a flight others could join, every SET an invalidation),
// without, and with GETs cached. allocs/op counts funnel's allocations too, since it runs in this
// process.
func BenchmarkRoundTrip(b *testing.B) {
	rs := redistest.Start(b)
	if reply, err := rs.Do("SET", "key", "value"); err != nil || reply != "+OK\r\n" {
		b.Fatal(reply, err)
	}
	targets := []struct {
		name string
		addr func(b *testing.B) string
	}{
		{"direct", func(*testing.B) string { return rs.Addr }},
		{"funnel", func(b *testing.B) string { return funneltest.Start(b, rs, proxy.Options{}, pool.Options{}) }},
		{"funnel-nocoalesce", func(b *testing.B) string {
			return funneltest.Start(b, rs, proxy.Options{DisableCoalesce: true}, pool.Options{})
		}},
		{"funnel-cached", func(b *testing.B) string {
			// GETs are cache hits, but for one read a second; each SET
			// drops the entry.
			return funneltest.Start(b, rs, proxy.Options{CacheRules: []proxy.CacheRule{{Pattern: "key", TTL: time.Second}}}, pool.Options{})
		}},
	}
	for _, target := range targets {
		for _, op := range []struct {
			name string
			cmd  []byte
		}{{"GET", getCmd}, {"SET", setCmd}} {
			b.Run(target.name+"/"+op.name, func(b *testing.B) { roundTrips(b, target.addr(b), op.cmd) })
		}
	}
}
