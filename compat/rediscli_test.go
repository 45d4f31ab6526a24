package compat

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/proxy"
)

// cli runs redis-cli against addr with stdin and returns its output.
func cli(t *testing.T, addr string, stdin string, args ...string) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "redis-cli", append([]string{"-h", host, "-p", port}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestRedisCLI drives redis-cli through funnel and directly, and compares.
func TestRedisCLI(t *testing.T) {
	direct := redistest.Start(t)
	rs := redistest.Start(t)
	addr := funneltest.Start(t, rs, proxy.Options{}, pool.Options{})

	// Commands read from stdin, one per line, as a user types them.
	session := "SET greeting hello\nGET greeting\nINCR n\nLPUSH l a b c\nLRANGE l 0 -1\nHSET h f v\nHGETALL h\n" +
		"MULTI\nINCR n\nINCR n\nEXEC\nGET nosuchkey\nLPUSH greeting x\nPING\n"
	if got, want := cli(t, addr, session), cli(t, direct.Addr, session); got != want {
		t.Errorf("interactive session differs:\nfunnel:\n%s\ndirect:\n%s", got, want)
	}
	// The same in RESP3 (redis-cli -3): maps, nulls and doubles print as
	// Redis's own.
	session3 := session + "ZADD z 1.5 m\nZSCORE z m\nHELLO\n"
	got3, want3 := cli(t, addr, session3, "-3"), cli(t, direct.Addr, session3, "-3")
	cut := func(s string) string { before, _, _ := strings.Cut(s, "server redis\n"); return before } // HELLO's id differs
	if cut(got3) != cut(want3) || !strings.Contains(got3, "\nproto 3\n") {
		t.Errorf("RESP3 session differs:\nfunnel:\n%s\ndirect:\n%s", got3, want3)
	}

	// Mass insertion with --pipe.
	var proto bytes.Buffer
	for i := 0; i < 100000; i++ {
		key, val := fmt.Sprint("key:", i), fmt.Sprint("value:", i)
		fmt.Fprintf(&proto, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(key), key, len(val), val)
	}
	out := cli(t, addr, proto.String(), "--pipe")
	if !strings.Contains(out, "errors: 0, replies: 100000") {
		t.Fatalf("--pipe: %s", out)
	}
	// 100,000 keys plus the sessions' greeting, n, l, h and z.
	if got := strings.TrimSpace(cli(t, addr, "", "DBSIZE")); got != "100005" {
		t.Fatalf("DBSIZE after --pipe: %s", got)
	}
	if got := strings.TrimSpace(cli(t, addr, "", "GET", "key:99999")); got != "value:99999" {
		t.Fatalf("GET key:99999 = %q", got)
	}

	// SUBSCRIBE: a subscriber started by redis-cli hears a PUBLISH.
	host, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, "redis-cli", "-h", host, "-p", port, "SUBSCRIBE", "news")
	subOut := &funneltest.Buffer{}
	sub.Stdout = subOut
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Process.Kill(); _ = sub.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for strings.TrimSpace(cli(t, addr, "", "PUBLISH", "news", "extra")) != "1" {
		if time.Now().After(deadline) {
			t.Fatal("redis-cli SUBSCRIBE never subscribed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for !strings.Contains(subOut.String(), "extra") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(subOut.String(), "subscribe\nnews\n1\n") || !strings.Contains(subOut.String(), "message\nnews\nextra") {
		t.Fatalf("subscriber printed %q", subOut.String())
	}
}
