package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestInfoTTLZero (issue 8, defect 12): --info-ttl 0 must not silently
// mean 5 s. Funnel may refuse it, with an error that names the flag, or
// take it at its word and reuse no INFO reply, so two INFO stats with
// commands in between differ. Today the second is the first one's copy.
func TestInfoTTLZero(t *testing.T) {
	rs := redistest.Start(t)
	addr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	args := []string{"--listen", addr, "--metrics-listen", "", "--info-ttl", "0"}
	env := func(k string) string { return map[string]string{"REDIS_URL": "redis://" + rs.Addr}[k] }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, io.Discard, env) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("run did not return after shutdown")
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-done:
			done <- err // for the deferred wait
			if err == nil || !strings.Contains(err.Error(), "info-ttl") {
				t.Fatalf("run with --info-ttl 0 returned %v, want serving or an error naming --info-ttl", err)
			}
			return // refused, and said why: fine
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("funnel not listening on %s", addr)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, ReadTimeout: 5 * time.Second})
	defer rdb.Close()
	processed := func() string {
		info, err := rdb.Info(context.Background(), "stats").Result()
		if err != nil {
			t.Fatalf("INFO stats: %v", err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				return v
			}
		}
		t.Fatalf("INFO stats without total_commands_processed: %q", info)
		return ""
	}
	first := processed()
	for i := 0; i < 3; i++ {
		if err := rdb.Set(context.Background(), fmt.Sprint("k", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if second := processed(); second == first {
		t.Errorf("with --info-ttl 0, INFO stats after 3 SETs still says total_commands_processed:%s: the reply was reused", first)
	}
}
