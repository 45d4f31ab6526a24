// Package compat runs real client libraries against funnel: the node suite
// in compat/node (ioredis, node-redis, BullMQ) and redis-cli.
package compat

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/proxy"
)

// TestNodeClients runs `node --test` in compat/node against a funnel in this
// process (under the race detector when go test has -race), with the
// redis-server behind it given as REDIS_DIRECT_URL for checks.
func TestNodeClients(t *testing.T) {
	if _, err := os.Stat("node/node_modules/bullmq"); err != nil {
		t.Fatal("compat/node/node_modules is missing: run `make test`, which runs `npm ci` there")
	}
	rs := redistest.Start(t)
	addr := funneltest.Start(t, rs, proxy.Options{}, pool.Options{MaxExclusive: 16})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "--test", "--test-concurrency=1", "--test-reporter=spec", "test/")
	cmd.Dir = "node"
	cmd.Env = append(os.Environ(), "FUNNEL_URL=redis://"+addr, "REDIS_DIRECT_URL=redis://"+rs.Addr)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test output:\n%s", out)
	if err != nil {
		t.Fatalf("node suite failed: %v", err)
	}
}
