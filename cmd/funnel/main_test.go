package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Run as the funnel binary itself when a test re-executes this file's
	// test binary, so signal handling is tested on a real process.
	if os.Getenv("FUNNEL_TEST_MAIN") == "1" {
		os.Args = append([]string{"funnel"}, strings.Fields(os.Getenv("FUNNEL_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// startRun runs funnel in this process until the returned stop is called;
// stop returns run's error.
func startRun(t *testing.T, args []string, env map[string]string) (addr string, logs *funneltest.Buffer, stop func() error) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	args = append([]string{"--listen", addr}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	logs = &funneltest.Buffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, logs, func(k string) string { return env[k] }) }()
	waitListening(t, addr, done)
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("run did not return after shutdown")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return addr, logs, stop
}

func waitListening(t *testing.T, addr string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("funnel not listening on %s", addr)
}

// slowScript keeps Redis busy for about ms milliseconds.
const slowScript = `local t0 = redis.call('TIME'); local now = t0
while (now[1]-t0[1])*1000000 + (now[2]-t0[2]) < tonumber(ARGV[1])*1000 do now = redis.call('TIME') end
return 'done'`

// TestShutdownFinishesInFlight cancels run (as SIGTERM does) while a slow
// command is in flight: it completes, new clients are refused, and run
// returns nil.
func TestShutdownFinishesInFlight(t *testing.T) {
	rs := redistest.Start(t)
	addr, _, stop := startRun(t, []string{"--metrics-listen", "", "--shutdown-timeout", "5s"},
		map[string]string{"REDIS_URL": "redis://" + rs.Addr})
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, MaxRetries: -1})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	result := make(chan *redis.Cmd, 1)
	go func() { result <- rdb.Eval(ctx, slowScript, nil, 500) }()
	time.Sleep(100 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	time.Sleep(100 * time.Millisecond)
	if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		c.Close()
		t.Error("a new connection was accepted during shutdown")
	}
	if res := <-result; res.Err() != nil || res.Val() != "done" {
		t.Fatalf("in-flight command: %v %v", res.Val(), res.Err())
	}
	if err := <-stopped; err != nil {
		t.Fatalf("run: %v", err)
	}
}

// TestSIGTERMExitsZero runs funnel as a real process and sends it SIGTERM.
func TestSIGTERMExitsZero(t *testing.T) {
	rs := redistest.Start(t)
	addr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FUNNEL_TEST_MAIN=1", "REDIS_URL=redis://"+rs.Addr,
		"FUNNEL_TEST_ARGS=--listen "+addr+" --metrics-listen=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitListening(t, addr, make(chan error))
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	if err := rdb.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.Close()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "stopped") {
		t.Fatalf("log: %s", out.String())
	}
}

func TestTLSUpstream(t *testing.T) {
	rs := redistest.StartTLS(t)
	addr, _, _ := startRun(t, []string{"--upstream", "rediss://" + rs.TLSAddr, "--tls-ca-file", rs.CAFile, "--metrics-listen", ""}, nil)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "tls", "yes", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := rdb.Get(ctx, "tls").Result(); err != nil || v != "yes" {
		t.Fatalf("GET: %q %v", v, err)
	}
}

func TestTLSWrongCA(t *testing.T) {
	rs := redistest.StartTLS(t)
	addr, _, _ := startRun(t, []string{"--upstream", "rediss://" + rs.TLSAddr, "--tls-ca-file", redistest.OtherCA(t), "--metrics-listen", ""}, nil)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	err := rdb.Get(context.Background(), "k").Err()
	if err == nil || !strings.Contains(err.Error(), "funnel: upstream unavailable (tls handshake") ||
		!strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("got %v", err)
	}
}

func TestEnvAndMetrics(t *testing.T) {
	rs := redistest.Start(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	addr, logs, _ := startRun(t, nil, map[string]string{
		"REDIS_URL":             "redis://" + rs.Addr,
		"FUNNEL_POOL_SIZE":      "3",
		"FUNNEL_METRICS_LISTEN": metricsAddr,
		"FUNNEL_LOG_FORMAT":     "json",
	})
	// The start-up line is logged just after the listener opens.
	for i := 0; !strings.Contains(logs.String(), `"pool_size":3`); i++ {
		if i == 100 {
			t.Fatalf("FUNNEL_POOL_SIZE/FUNNEL_LOG_FORMAT not applied: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		rdb.Set(ctx, "k", i, 0)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get("/metrics")
	for _, want := range []string{
		`funnel_client_commands_total{command="set"} 5`,
		`funnel_upstream_commands_total{command="set"} 5`,
		`funnel_upstream_connections{lane="shared"} 1`,
		`funnel_client_connections 1`,
		`funnel_request_duration_seconds_count{route="upstream"}`,
		`funnel_cache_misses_total`,
		`funnel_exclusive_connections`,
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz: %d", code)
	}
	rs.Stop()
	// The pool notices the lost connection as its reader sees the close.
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _ := get("/readyz")
		if code == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with the upstream down: %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConfigErrors(t *testing.T) {
	none := func(string) string { return "" }
	if err := run(context.Background(), nil, io.Discard, none); err == nil || !strings.Contains(err.Error(), "no upstream") {
		t.Errorf("no upstream: %v", err)
	}
	env := func(k string) string {
		return map[string]string{"FUNNEL_POOL_SIZE": "many", "REDIS_URL": "redis://127.0.0.1:1"}[k]
	}
	if err := run(context.Background(), nil, io.Discard, env); err == nil || !strings.Contains(err.Error(), "FUNNEL_POOL_SIZE") {
		t.Errorf("bad env: %v", err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, none); err != errHelp || !strings.Contains(out.String(), "FUNNEL_UPSTREAM") {
		t.Errorf("--help: %v %s", err, out.String())
	}
	badRule := func(k string) string {
		return map[string]string{"FUNNEL_CACHE": "bull:*", "REDIS_URL": "redis://127.0.0.1:1"}[k]
	}
	if err := run(context.Background(), nil, io.Discard, badRule); err == nil || !strings.Contains(err.Error(), "PATTERN=TTL") {
		t.Errorf("bad cache rule: %v", err)
	}
}

func TestCacheRulesFromFlagsAndEnv(t *testing.T) {
	env := func(k string) string {
		return map[string]string{"FUNNEL_CACHE": "bull:*=2s, jobs:*=500ms", "REDIS_URL": "redis://127.0.0.1:1"}[k]
	}
	cfg, err := parseConfig(nil, io.Discard, env)
	if err != nil || len(cfg.cacheRules) != 2 || cfg.cacheRules[1].Pattern != "jobs:*" || cfg.cacheRules[1].TTL != 500*time.Millisecond {
		t.Fatalf("FUNNEL_CACHE: %+v %v", cfg, err)
	}
	cfg, err = parseConfig([]string{"--cache", "a:*=1s", "--cache", "b:*=3s", "--coalesce=false"}, io.Discard, env)
	if err != nil || len(cfg.cacheRules) != 2 || cfg.cacheRules[0].Pattern != "a:*" || cfg.coalesce {
		t.Fatalf("--cache flags: %+v %v", cfg, err)
	}
}

// TestUnixSocketListen serves clients on a unix socket path.
func TestUnixSocketListen(t *testing.T) {
	rs := redistest.Start(t)
	sock := t.TempDir() + "/funnel.sock"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", sock, "--metrics-listen", ""}, io.Discard,
			func(k string) string { return map[string]string{"REDIS_URL": "redis://" + rs.Addr}[k] })
	}()
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, MaxRetries: 20})
	defer rdb.Close()
	var err error
	for i := 0; i < 100; i++ {
		if err = rdb.Set(context.Background(), "u", "1", 0).Err(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := rdb.ClientInfo(context.Background()).Val(); got == nil || got.Addr != "/unix" {
		t.Errorf("CLIENT INFO addr over a unix socket: %+v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file left behind: %v", err)
	}
}

// TestProcs: one core by default; --procs or FUNNEL_PROCS set it, and
// GOMAXPROCS in the environment is kept unless --procs is given.
func TestProcs(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want int
	}{
		{nil, nil, 1},
		{[]string{"--procs", "4"}, nil, 4},
		{nil, map[string]string{"FUNNEL_PROCS": "0"}, 0},
		{nil, map[string]string{"GOMAXPROCS": "3"}, 0},
		{[]string{"--procs", "2"}, map[string]string{"GOMAXPROCS": "3"}, 2},
	}
	for _, tc := range cases {
		env := func(k string) string {
			if k == "REDIS_URL" {
				return "redis://127.0.0.1:1"
			}
			return tc.env[k]
		}
		cfg, err := parseConfig(tc.args, io.Discard, env)
		if err != nil || cfg.procs != tc.want {
			t.Errorf("%v %v: procs %v, want %d (%v)", tc.args, tc.env, cfg, tc.want, err)
		}
	}
	if _, err := parseConfig([]string{"--procs", "-1", "--upstream", "redis://x:1"}, io.Discard, func(string) string { return "" }); err == nil {
		t.Error("--procs -1 accepted")
	}
	// run applies it.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	_, _, stop := startRun(t, []string{"--procs", "3", "--upstream", "redis://127.0.0.1:1", "--metrics-listen", ""}, nil)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("GOMAXPROCS is %d after --procs 3", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
