package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/proxy"
	"github.com/redis/go-redis/v9"
)

// startReloadable is startRun with a reload channel: each value sent on
// the returned channel is a SIGHUP to that funnel only.
func startReloadable(t *testing.T, args []string, env map[string]string) (addr string, logs *funneltest.Buffer, hup chan<- os.Signal, stop func() error) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	args = append([]string{"--listen", addr}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	logs = &funneltest.Buffer{}
	signals := make(chan os.Signal)
	done := make(chan error, 1)
	go func() { done <- runWithReload(ctx, args, logs, envOf(env), signals) }()
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
	return addr, logs, signals, stop
}

// waitLog waits until the log holds want n times in all.
func waitLog(t *testing.T, logs *funneltest.Buffer, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(logs.String(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the log does not hold %q %d times:\n%s", want, n, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sendHUP delivers one reload request; run reads it in its select loop.
func sendHUP(t *testing.T, hup chan<- os.Signal) {
	t.Helper()
	select {
	case hup <- syscall.SIGHUP:
	case <-time.After(5 * time.Second):
		t.Fatal("run does not read its reload channel")
	}
}

// TestSIGHUPReload changes the config file under a running funnel: the log
// level and the cache rules take effect at once, what needs a restart is
// logged as such, a bad file is rejected whole, and a
// blocked client and a pipelining client keep their connections
// throughout.
func TestSIGHUPReload(t *testing.T) {
	rs := redistest.Start(t)
	path := writeFile(t, "funnel.yaml", "log-level: warn\ncache: ['a:*=1s']\n")
	addr, logs, hup, stop := startReloadable(t, []string{"--config", path, "--metrics-listen", ""},
		map[string]string{"REDIS_URL": "redis://" + rs.Addr})
	ctx := context.Background()

	// The pipelining client is a raw connection, so that it is certainly
	// one connection throughout (go-redis pipelines may use another).
	piped, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer piped.Close()
	_ = piped.SetDeadline(time.Now().Add(30 * time.Second))
	pr := bufio.NewReader(piped)
	pipeline := func(cmds string, n int) []string {
		t.Helper()
		if _, err := io.WriteString(piped, cmds); err != nil {
			t.Fatal(err)
		}
		var replies []string
		for range n {
			line, err := pr.ReadString('\n')
			if err != nil {
				t.Fatalf("pipelining client: %v", err)
			}
			if strings.HasPrefix(line, "$") {
				line, _ = pr.ReadString('\n')
			}
			replies = append(replies, strings.TrimSpace(line))
		}
		return replies
	}
	id := pipeline("CLIENT ID\r\n", 1)[0]
	blocked := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, MaxRetries: -1, ReadTimeout: 20 * time.Second})
	defer blocked.Close()
	popped := make(chan []string, 1)
	go func() { popped <- blocked.BLPop(ctx, 15*time.Second, "q").Val() }()

	// The file's level is in force from the start: no INFO line yet.
	if strings.Contains(logs.String(), "level=INFO") {
		t.Fatalf("log-level: warn from the file not applied:\n%s", logs.String())
	}

	writeFile2(t, path, "log-level: debug\ncache: ['a:*=1s', 'b:*=2s']\npool-size: 5\n")
	sendHUP(t, hup)
	waitLog(t, logs, `msg="reload done" applied=2 needs_restart=1`, 1)
	for _, want := range []string{
		`level=INFO msg="reload: applied" setting=log-level old=warn new=debug`,
		`level=INFO msg="reload: applied" setting=cache old="[a:*=1s]" new="[a:*=1s,b:*=2s]"`,
		`level=INFO msg="reload: proxy rules in effect" proxy.cache="[a:*=1s b:*=2s]"`,
		`level=WARN msg="reload: this setting needs a restart; restart funnel to apply it" setting=pool-size old=10 new=5`,
		`level=DEBUG msg="reload: settings in effect"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q", want)
		}
	}

	// A bad file changes nothing, not even its valid log-level.
	writeFile2(t, path, "log-level: error\nbogus: 1\ncache-script: [xyz]\n")
	sendHUP(t, hup)
	waitLog(t, logs, "reload rejected; the running configuration is kept", 1)
	for _, want := range []string{
		`msg="reload rejected: ` + path + `:2: unknown setting \"bogus\"`,
		`msg="reload rejected: ` + path + `:3: cache-script: \"xyz\" is not a script's SHA1`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	// Still at debug: the next reload's INFO lines appear, and the level,
	// applied before, is not reported as a change again.
	writeFile2(t, path, "log-level: debug\ncache: ['a:*=1s', 'b:*=2s']\n")
	sendHUP(t, hup)
	waitLog(t, logs, "SIGHUP: reloading the configuration", 2) // the first was at warn
	waitLog(t, logs, `msg="reload: configuration unchanged"`, 1)
	if n := strings.Count(logs.String(), "setting=log-level"); n != 1 {
		t.Errorf("log-level reported as changed %d times", n)
	}

	// Both clients kept their connections.
	got := pipeline("SET k v\r\nGET k\r\nCLIENT ID\r\nLPUSH q job\r\n", 4)
	if strings.Join(got, " ") != "+OK v "+id+" :1" {
		t.Errorf("pipelining client after reloads: %q (client id was %s)", got, id)
	}
	select {
	case got := <-popped:
		if len(got) != 2 || got[1] != "job" {
			t.Errorf("blocked client got %v", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the blocked client never got its element")
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// writeFile2 rewrites an existing file.
func writeFile2(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fakeReloader records what it is given, and fails when told to.
type fakeReloader struct {
	got  []proxy.Reloadable
	fail error
}

func (f *fakeReloader) Reload(r proxy.Reloadable) error {
	f.got = append(f.got, r)
	return f.fail
}

// TestReloadState: the reloader gets the whole new Reloadable when a
// proxy-side setting changed, and a setting it could not apply stays
// pending, so the next reload reports it again.
func TestReloadState(t *testing.T) {
	path := writeFile(t, "funnel.yaml", "upstream: redis://h:1\ncache: ['a:*=1s']\nrequirepass: old-secret\n")
	args := []string{"--config", path}
	started, err := parseConfig(args, &bytes.Buffer{}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	logs := &funneltest.Buffer{}
	level := new(slog.LevelVar)
	fake := &fakeReloader{fail: errors.New("fake: not applied")}
	s := newReloadState(started, args, envOf(nil), level, fake, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level})))

	s.reload()
	if len(fake.got) != 0 || !strings.Contains(logs.String(), "reload: configuration unchanged") {
		t.Fatalf("unchanged file: calls %v\n%s", fake.got, logs.String())
	}
	writeFile2(t, path, "upstream: redis://h:1\ncache: ['b:*=3s']\nclient-write-timeout: 5s\nrequirepass: new-secret\ndeny: [flushall]\n")
	s.reload()
	if len(fake.got) != 1 {
		t.Fatalf("reloader called %d times", len(fake.got))
	}
	r := fake.got[0]
	if len(r.CacheRules) != 1 || r.CacheRules[0] != (proxy.CacheRule{Pattern: "b:*", TTL: 3 * time.Second}) ||
		r.ClientWriteTimeout != 5*time.Second || r.ClientOutputLimit != 512<<20 || len(r.Deny) != 1 {
		t.Errorf("Reloadable: %+v", r)
	}
	out := logs.String()
	if strings.Contains(out, "old-secret") || strings.Contains(out, "new-secret") ||
		!strings.Contains(out, `setting=requirepass old=(secret) new="(secret, changed)"`) {
		t.Errorf("requirepass change:\n%s", out)
	}
	// Not applied: reported again.
	s.reload()
	if n := strings.Count(logs.String(), `msg="reload: not applied; restart funnel to apply it" setting=cache`); n != 2 {
		t.Errorf("pending cache change reported %d times:\n%s", n, logs.String())
	}
	// Applied: the next reload finds nothing new to hand over.
	fake.fail = nil
	s.reload()
	calls := len(fake.got)
	s.reload()
	if len(fake.got) != calls || strings.Count(logs.String(), "applied=0 needs_restart=1") != 1 {
		t.Errorf("after an applied reload: %d calls (was %d)\n%s", len(fake.got), calls, logs.String())
	}
}

// TestSIGHUPKeepsProcess sends a real SIGHUP to a funnel process (a child
// of the test, not the test itself): it reloads and keeps serving, where
// it used to die with status 129.
func TestSIGHUPKeepsProcess(t *testing.T) {
	rs := redistest.Start(t)
	addr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(childEnv(), "FUNNEL_TEST_MAIN=1", "REDIS_URL=redis://"+rs.Addr,
		"FUNNEL_TEST_ARGS=--listen "+addr+" --metrics-listen=")
	out := &funneltest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitListening(t, addr, make(chan error))
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, MaxRetries: -1})
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, out, "reload: configuration unchanged", 1)
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "1" {
		t.Errorf("after SIGHUP: %q %v", v, err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, out.String())
	}
}

// TestSIGHUPAppliesToRunningProxy rewrites the config file under a running
// funnel with a new cache rule and deny entry and reloads it: the rule and
// the deny list are in force for the next commands (the upstream runs one
// HGET for two, INFO funnel shows the rules), while a client blocked in
// BLPOP q 0 keeps its connection and gets its element, and a client
// pipelining SET and GET throughout sees no error and no disconnect. A bad
// file then keeps the running rules.
func TestSIGHUPAppliesToRunningProxy(t *testing.T) {
	rs := redistest.Start(t)
	path := writeFile(t, "funnel.yaml", "cache: ['a:*=1m']\n")
	addr, logs, hup, stop := startReloadable(t, []string{"--config", path, "--metrics-listen", ""},
		map[string]string{"REDIS_URL": "redis://" + rs.Addr})
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, MaxRetries: -1})
	defer rdb.Close()
	if err := rdb.HSet(ctx, "b:h", "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	hgets := func() int {
		t.Helper()
		before := rs.CommandStats(t)["hget"]
		for range 2 {
			if v, err := rdb.HGet(ctx, "b:h", "f").Result(); err != nil || v != "v" {
				t.Fatalf("HGET: %q %v", v, err)
			}
		}
		return rs.CommandStats(t)["hget"] - before
	}

	// The blocked client, on a connection of its own.
	blocked, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer blocked.Close()
	_ = blocked.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(blocked, "BLPOP q 0\r\n"); err != nil {
		t.Fatal(err)
	}
	waitUntilBlocked(t, rdb, 1)

	// The pipelining client: SET and GET of its own keys, in a loop, on one
	// connection, until told to stop.
	piped, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer piped.Close()
	var rounds atomic.Int64
	pipeErr := make(chan error, 1)
	quit := make(chan struct{})
	go func() {
		pr := bufio.NewReader(piped)
		for i := 0; ; i++ {
			select {
			case <-quit:
				pipeErr <- nil
				return
			default:
			}
			_ = piped.SetDeadline(time.Now().Add(5 * time.Second))
			v := strconv.Itoa(i)
			if _, err := fmt.Fprintf(piped, "SET p:%d %s\r\nGET p:%d\r\nGET p:%d\r\n", i%10, v, i%10, i%10); err != nil {
				pipeErr <- err
				return
			}
			want := []string{"+OK", "$" + strconv.Itoa(len(v)), v, "$" + strconv.Itoa(len(v)), v}
			for _, w := range want {
				line, err := pr.ReadString('\n')
				if err != nil || strings.TrimSpace(line) != w {
					pipeErr <- fmt.Errorf("round %d: got %q (%v), want %q", i, line, err, w)
					return
				}
			}
			rounds.Add(1)
		}
	}()
	waitRounds := func(n int64) {
		t.Helper()
		target := rounds.Load() + n
		deadline := time.Now().Add(10 * time.Second)
		for rounds.Load() < target {
			select {
			case err := <-pipeErr:
				t.Fatalf("pipelining client: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the pipelining client stalled")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitRounds(20)

	if n := hgets(); n != 2 {
		t.Fatalf("before the reload: upstream ran %d HGETs for 2, want 2 (no rule for b:*)", n)
	}
	writeFile2(t, path, "cache: ['a:*=1m', 'b:*=1m']\ndeny: [dbsize]\n")
	sendHUP(t, hup)
	waitLog(t, logs, `msg="reload done" applied=2 needs_restart=0`, 1)
	waitRounds(20)

	if n := hgets(); n != 1 {
		t.Errorf("after the reload: upstream ran %d HGETs for 2, want 1 (the second from the cache)", n)
	}
	if err := rdb.DBSize(ctx).Err(); err == nil || !strings.Contains(err.Error(), "DBSIZE is not supported") {
		t.Errorf("DBSIZE after deny: [dbsize] was reloaded: %v", err)
	}
	info := rdb.Info(ctx, "funnel").Val()
	for _, want := range []string{"funnel_cache_rules:a:*=1m0s,b:*=1m0s\r\n", "funnel_deny:dbsize\r\n"} {
		if !strings.Contains(info, want) {
			t.Errorf("INFO funnel lacks %q:\n%s", want, info)
		}
	}

	// A bad file is rejected whole: the running rules stay.
	writeFile2(t, path, "cache: ['b:*=nope']\n")
	sendHUP(t, hup)
	waitLog(t, logs, "reload rejected; the running configuration is kept", 1)
	if n := hgets(); n != 0 {
		t.Errorf("after a rejected reload: upstream ran %d HGETs for 2, want 0 (still cached)", n)
	}
	if info := rdb.Info(ctx, "funnel").Val(); !strings.Contains(info, "funnel_cache_rules:a:*=1m0s,b:*=1m0s\r\n") {
		t.Errorf("INFO funnel after a rejected reload:\n%s", info)
	}
	waitRounds(20)

	// The blocked client is still there, and gets the element.
	if err := rdb.LPush(ctx, "q", "job").Err(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(blocked)
	var got []string
	for range 5 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("blocked client after the reloads: %v (read %q)", err, got)
		}
		got = append(got, strings.TrimSpace(line))
	}
	if strings.Join(got, " ") != "*2 $1 q $3 job" {
		t.Errorf("blocked client got %q", got)
	}
	close(quit)
	if err := <-pipeErr; err != nil {
		t.Errorf("pipelining client: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// waitUntilBlocked waits until funnel counts n blocked clients.
func waitUntilBlocked(t *testing.T, rdb *redis.Client, n int) {
	t.Helper()
	want := fmt.Sprintf("funnel_blocked_clients:%d\r\n", n)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(rdb.Info(context.Background(), "funnel").Val(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("funnel never had %d blocked clients", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
