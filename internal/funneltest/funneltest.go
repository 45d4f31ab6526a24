// Package funneltest runs a funnel in the test's process, in front of a real
// redis-server, for tests and benchmarks outside the proxy package.
package funneltest

import (
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

// Start runs funnel on a free loopback port in front of rs, with the given
// options, until the test ends. It returns funnel's address.
func Start(t testing.TB, rs *redistest.Server, opts proxy.Options, popts pool.Options) string {
	t.Helper()
	up, err := pool.ParseURL("redis://"+rs.Addr, pool.TLSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry())
	opts.Metrics, popts.Metrics = m, m
	p := pool.New(up, popts)
	srv := proxy.New(p, opts)
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
	return ln.Addr().String()
}
