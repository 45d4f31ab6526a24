package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/redis/go-redis/v9"
)

// isFunnelError reports whether err is an error reply funnel made.
func isFunnelError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "ERR funnel: ")
}

// TestUpstreamKilledWhileClientsPipeline kills the upstream under 50
// pipelining clients: every request gets a reply or a funnel error, none
// hangs, and funnel serves again within a second of the upstream's return.
func TestUpstreamKilledWhileClientsPipeline(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Timeout: 2 * time.Second})
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	funnelErrors := 0
	for c := 0; c < 50; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			// A client-side timeout well above funnel's would catch a hang.
			rdb := redis.NewClient(&redis.Options{Addr: f.Addr, PoolSize: 1, ReadTimeout: 8 * time.Second, MaxRetries: -1})
			defer rdb.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				pipe := rdb.Pipeline()
				key := fmt.Sprintf("k%d", c)
				for j := 0; j < 10; j++ {
					pipe.Set(ctx, key, i, 0)
					pipe.Get(ctx, key)
				}
				cmds, _ := pipe.Exec(ctx)
				mu.Lock()
				// Each GET follows its SET: it must read that SET's value
				// unless the SET failed (a funnel error), after which it may
				// find nothing on a restarted upstream.
				setFailed := false
				for j, cmd := range cmds {
					err := cmd.Err()
					switch {
					case err == nil && j%2 == 1 && !setFailed && cmd.(*redis.StringCmd).Val() != fmt.Sprint(i):
						bad = append(bad, fmt.Sprintf("GET after SET %d read %q", i, cmd.(*redis.StringCmd).Val()))
					case err == nil:
					case isFunnelError(err):
						funnelErrors++
					case errors.Is(err, redis.Nil) && setFailed:
					default:
						bad = append(bad, err.Error())
					}
					if j%2 == 0 {
						setFailed = err != nil
					}
				}
				mu.Unlock()
			}
		}(c)
	}
	time.Sleep(300 * time.Millisecond)
	f.Redis.Stop()
	time.Sleep(500 * time.Millisecond)
	f.Redis.Restart()
	back := time.Now()
	probe := f.client(t)
	for err := probe.Set(ctx, "probe", "1", 0).Err(); err != nil; err = probe.Set(ctx, "probe", "1", 0).Err() {
		if time.Since(back) > time.Second {
			t.Fatalf("funnel not serving %v after the upstream returned: %v", time.Since(back), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("serving again %v after the upstream returned", time.Since(back))
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d requests failed without a funnel error, e.g. %q", len(bad), bad[0])
	}
	if funnelErrors == 0 {
		t.Fatal("no request saw the outage")
	}
	// Every client works normally afterwards.
	rdb := f.client(t)
	for i := 0; i < 100; i++ {
		if err := rdb.Set(ctx, "after", i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeUpstream accepts connections and hands each to script.
func fakeUpstream(t *testing.T, script func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				script(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestUpstreamFaults covers what a real Redis does not do: never answer,
// answer garbage, or drop the connection in the middle of a reply.
func TestUpstreamFaults(t *testing.T) {
	cases := []struct {
		name   string
		script func(net.Conn)
		want   string
	}{
		{"stall", func(c net.Conn) {
			buf := make([]byte, 1024)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}, "ERR funnel: upstream timeout (no reply within 300ms)"},
		{"garbage", func(c net.Conn) {
			buf := make([]byte, 1024)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte("?what\r\n"))
			_, _ = c.Read(buf)
		}, "ERR funnel: upstream protocol error"},
		{"cut", func(c net.Conn) {
			buf := make([]byte, 1024)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte("$10\r\nabc"))
		}, "ERR funnel: upstream connection lost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeUpstream(t, tc.script)
			f := startFunnelFor(t, nil, "redis://"+addr, Options{}, pool.Options{Timeout: 300 * time.Millisecond})
			c := dialRaw(t, f.Addr)
			start := time.Now()
			got := c.do("GET", "k")
			if !strings.HasPrefix(got, "-"+tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("took %v", took)
			}
			// The client's connection stays usable.
			if got := c.do("PING"); got != "+PONG\r\n" {
				t.Fatalf("PING after fault: %q", got)
			}
		})
	}
}

// TestUpstreamDown checks the error a client gets when the upstream refuses
// connections.
func TestUpstreamDown(t *testing.T) {
	port := redistest.FreePort(t)
	f := startFunnelFor(t, nil, fmt.Sprintf("redis://127.0.0.1:%d", port), Options{}, pool.Options{})
	c := dialRaw(t, f.Addr)
	got := c.do("GET", "k")
	if !strings.HasPrefix(got, "-ERR funnel: upstream unavailable (dial tcp") || !strings.Contains(got, "connection refused") {
		t.Fatalf("got %q", got)
	}
}
