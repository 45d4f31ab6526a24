package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
)

// envOf returns a getenv over m.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// runFunnel runs this test binary as the funnel command with args (split on
// spaces) and env, which replaces any FUNNEL_* or REDIS_URL variable of the
// test's own environment. It returns stdout, stderr and the exit code.
func runFunnel(t *testing.T, args string, env ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(childEnv(), append([]string{"FUNNEL_TEST_MAIN=1", "FUNNEL_TEST_ARGS=" + args}, env...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("funnel %s: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// childEnv is the test's environment without funnel's own variables.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FUNNEL_") && !strings.HasPrefix(kv, "REDIS_URL=") && !strings.HasPrefix(kv, "GOMAXPROCS=") {
			env = append(env, kv)
		}
	}
	return env
}

func TestVersion(t *testing.T) {
	for _, flag := range []string{"--version", "-V"} {
		var out bytes.Buffer
		if err := run(context.Background(), []string{flag}, &out, envOf(nil)); err != nil {
			t.Fatalf("%s: %v", flag, err)
		}
		if got := out.String(); !strings.HasPrefix(got, "funnel dev (commit unknown, "+runtime.Version()) {
			t.Errorf("%s printed %q", flag, got)
		}
	}
	// As a process: exit 0, even with no upstream configured.
	stdout, stderr, code := runFunnel(t, "-V")
	if code != 0 || !strings.Contains(stdout, runtime.Version()) || stderr != "" {
		t.Errorf("funnel -V: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestCheckGood prints every setting with its value and source, secrets
// masked, and exits 0.
func TestCheckGood(t *testing.T) {
	env := map[string]string{
		"REDIS_URL":        "rediss://default:s3cret-pw@xyz.example:6379/1",
		"FUNNEL_POOL_SIZE": "4",
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--check", "--requirepass", "clientpw", "--cache", "bull:*=2s",
		"--cache-script", "5e107aa7dd123c4a80fc40151f8d25596c39353a", "--deny", "flushall,config set"}, &out, envOf(env))
	if err != nil {
		t.Fatalf("--check: %v\n%s", err, out.String())
	}
	got := out.String()
	if strings.Contains(got, "s3cret-pw") || strings.Contains(got, "clientpw") {
		t.Errorf("a secret is shown:\n%s", got)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(got, "\n") {
		if f := strings.Fields(l); len(f) >= 3 {
			lines[f[0]] = strings.Join(f[1:], " ")
		}
	}
	for name, want := range map[string]string{
		"upstream":         "rediss://default:xxxxx@xyz.example:6379/1 env REDIS_URL",
		"pool-size":        "4 env FUNNEL_POOL_SIZE",
		"requirepass":      "xxxxx flag",
		"cache":            "[bull:*=2s] flag",
		"cache-script":     "[5e107aa7dd123c4a80fc40151f8d25596c39353a] flag",
		"deny":             "[flushall,config set] flag",
		"listen":           "127.0.0.1:6380 default",
		"upstream-timeout": "30s default",
	} {
		if lines[name] != want {
			t.Errorf("%s: %q, want %q", name, lines[name], want)
		}
	}
	// Every setting is listed.
	c, err := parseConfig(nil, &out, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range c.settings() {
		if _, ok := lines[name]; !ok {
			t.Errorf("setting %s not printed", name)
		}
	}
	if !strings.Contains(got, "at most 4 shared (--pool-size) + 32 exclusive (--max-exclusive) + 1 pub/sub = 37") {
		t.Errorf("no connection budget:\n%s", got)
	}
	stdout, stderr, code := runFunnel(t, "-t --pool-size 2", "REDIS_URL=redis://127.0.0.1:1")
	if code != 0 || !strings.Contains(stdout, "the configuration is valid") || stderr != "" {
		t.Errorf("funnel -t: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestCheckBad finds every problem at once, one line each, naming the
// setting as the operator gave it.
func TestCheckBad(t *testing.T) {
	env := map[string]string{
		"REDIS_URL":           "redis://user:pw-secret@127.0.0.1:6379",
		"FUNNEL_DIAL_TIMEOUT": "5",
		"FUNNEL_MAX_CLIENTS":  "0",
	}
	args := []string{"--check",
		"--cache-script", "xyz",
		"--cache", "bull:*", "--cache", "jobs:*=0s", "--cache", "a:*=1s,a:*=2s",
		"--tls-skip-verify", "--tls-ca-file", "/etc/hostname",
		"--pool-size", "many", "--max-exclusive", "0", "--procs", "-1",
		"--listen", "6380", "--metrics-listen", "127.0.0.1:70000",
		"--log-level", "loud", "--log-format", "xml",
		"--coalesce=maybe", "--upstream-timeout", "-1s",
		"--deny", "config sett", "--deny", "get foo",
		"--cache-max-value", "100", "--cache-max-bytes", "10",
		"--wait-linger", "-1s",
	}
	err := run(context.Background(), args, &bytes.Buffer{}, envOf(env))
	var ce *configError
	if !errors.As(err, &ce) {
		t.Fatalf("want a configError, got %v", err)
	}
	want := []string{
		`--cache-script: "xyz" is not a script's SHA1: want 40 hex digits`,
		`--wait-linger: must not be negative, not -1s (0 means a shared pop ends with its waiters)`,
		`--cache: cache rule "bull:*": want PATTERN=TTL`,
		`--cache: cache rule "jobs:*=0s": TTL must be a positive duration`,
		`--cache: pattern "a:*" has two rules`,
		`--tls-skip-verify: set, but the upstream redis://user:xxxxx@127.0.0.1:6379 does not use TLS`,
		`--tls-ca-file: set, but the upstream redis://user:xxxxx@127.0.0.1:6379 does not use TLS`,
		`--tls-skip-verify: set together with --tls-ca-file, which it makes pointless`,
		`--pool-size: "many" is not a whole number (for example 10)`,
		`--max-exclusive: must be at least 1, not 0`,
		`--procs: must be 0 (Go's default) or more, not -1`,
		`--listen: "6380": want host:port`,
		`--metrics-listen: "127.0.0.1:70000": port 70000 is out of range`,
		`--log-level: "loud" is not debug, info, warn or error`,
		`--log-format: "xml" is not text or json`,
		`--coalesce: "maybe" is not true or false`,
		`--upstream-timeout: must be a positive duration, not -1s`,
		`--deny: "config sett": CONFIG has no subcommand SETT`,
		`--deny: "get foo": GET has no subcommands`,
		`--cache-max-value: 100 is more than --cache-max-bytes 10`,
		`FUNNEL_DIAL_TIMEOUT: "5" is not a duration (for example 5s`,
		`FUNNEL_MAX_CLIENTS: must be at least 1, not 0`,
	}
	for _, w := range want {
		found := false
		for _, p := range ce.problems {
			if strings.HasPrefix(p, w) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem %q", w)
		}
	}
	if len(ce.problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(ce.problems), len(want), ce.Error())
	}
	if strings.Contains(ce.Error(), "pw-secret") {
		t.Errorf("the upstream password is shown:\n%s", ce.Error())
	}

	// As a process: exit 1, each problem on its own line of stderr.
	stdout, stderr, code := runFunnel(t, "--check --cache-script xyz --pool-size 0", "REDIS_URL=redis://127.0.0.1:1")
	wantErr := "funnel: --pool-size: must be at least 1, not 0\n" +
		"funnel: --cache-script: \"xyz\" is not a script's SHA1: want 40 hex digits, as SCRIPT LOAD returns\n" +
		"funnel: 2 problem(s) in the configuration\n"
	if code != 1 || stderr != wantErr || stdout != "" {
		t.Errorf("exit %d\nstdout %q\nstderr %q\nwant   %q", code, stdout, stderr, wantErr)
	}
	// A bad flag is reported as such, not as a crash.
	_, stderr, code = runFunnel(t, "--check --pool-sise 3", "REDIS_URL=redis://127.0.0.1:1")
	if code != 1 || !strings.Contains(stderr, "unknown flag: --pool-sise (funnel --help lists the flags)") {
		t.Errorf("unknown flag: exit %d, %q", code, stderr)
	}
}

// TestCheckUpstreamTLSAndURL covers the rediss:// side of the conflicts.
func TestCheckUpstreamTLSAndURL(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--upstream", "http://x:1"}, `--upstream: http://x:1: the scheme must be redis:// or rediss://`},
		{[]string{"--upstream", "rediss://h:1", "--tls-ca-file", "/nonexistent/ca.pem"}, `--tls-ca-file: pool: tls ca file: open /nonexistent/ca.pem`},
		{[]string{"--upstream", "rediss://h:1", "--tls-ca-file", "/etc/hostname"}, `--tls-ca-file: pool: tls ca file /etc/hostname holds no PEM certificate`},
		{[]string{"--upstream", "redis://:pw@h:1/x"}, `--upstream: pool: upstream url: redis: invalid database number: "x"`},
		{[]string{"--upstream", "redis://u:p%zz@h:1"}, `--upstream: not a URL`},
		{[]string{"--upstream", "redis://h:1", "--pprof", "--metrics-listen="}, `--pprof: profiles are served on --metrics-listen, which is empty`},
		{[]string{"--upstream", "redis://h:1", "--metrics-listen", "127.0.0.1:6380"}, `--metrics-listen: 127.0.0.1:6380 is also --listen`},
		{[]string{"--upstream", "redis://h:1", "--listen", "/nonexistent/dir/f.sock"}, `--listen: "/nonexistent/dir/f.sock": the socket's directory /nonexistent/dir does not exist`},
		{[]string{"--upstream", "redis://h:1", "--cache-script", "5e107aa7dd123c4a80fc40151f8d25596c39353a", "--coalesce=false"}, `--cache-script: has no effect with --coalesce=false and no --cache rule`},
		{[]string{"--upstream", "redis://h:1", "stray"}, `unexpected argument "stray"`},
		{nil, "no upstream: set --upstream, FUNNEL_UPSTREAM or REDIS_URL"},
	}
	for _, tc := range cases {
		_, err := parseConfig(append([]string{"--check"}, tc.args...), &bytes.Buffer{}, envOf(nil))
		var ce *configError
		if !errors.As(err, &ce) || len(ce.problems) != 1 || !strings.HasPrefix(ce.problems[0], tc.want) {
			t.Errorf("%v: got %v, want one problem %q", tc.args, err, tc.want)
		}
	}
	// A good rediss:// setup passes.
	rs := redistest.StartTLS(t)
	if _, err := parseConfig([]string{"--upstream", "rediss://" + rs.TLSAddr, "--tls-ca-file", rs.CAFile}, &bytes.Buffer{}, envOf(nil)); err != nil {
		t.Errorf("rediss with a CA: %v", err)
	}
}

// TestCheckUpstream dials and logs in once, and reports a refused login or
// an unreachable upstream as a failed check.
func TestCheckUpstream(t *testing.T) {
	rs := redistest.Start(t, "--requirepass", "right")
	good := "redis://:right@" + rs.Addr
	pings := rs.CommandStats(t)["ping"] // redistest's own readiness check
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--check-upstream", "--upstream", good}, &out, envOf(nil)); err != nil {
		t.Fatalf("good upstream: %v", err)
	}
	if !strings.Contains(out.String(), "upstream redis://"+rs.Addr+"/0: connected, logged in and answered PING in ") {
		t.Errorf("output:\n%s", out.String())
	}
	if n := rs.CommandStats(t)["ping"] - pings; n != 1 {
		t.Errorf("upstream saw %d PINGs, want 1", n)
	}
	for _, tc := range []struct{ url, want string }{
		{"redis://:wrong@" + rs.Addr, "upstream check failed: redis://" + rs.Addr + "/0: funnel: upstream unavailable (login refused: WRONGPASS invalid username-password pair"},
		{"redis://" + rs.Addr, `PING answered "-NOAUTH Authentication required."`},
		{"redis://127.0.0.1:1", "upstream check failed: redis://127.0.0.1:1/0: funnel: upstream unavailable (dial tcp 127.0.0.1:1: connect: connection refused)"},
	} {
		err := run(context.Background(), []string{"--check-upstream", "--upstream", tc.url, "--dial-timeout", "2s"}, &bytes.Buffer{}, envOf(nil))
		if !errors.Is(err, errUpstreamCheck) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.url, err, tc.want)
		}
	}
	_, stderr, code := runFunnel(t, "--check-upstream --upstream redis://127.0.0.1:1 --dial-timeout 2s")
	if code != 1 || !strings.Contains(stderr, "funnel: upstream check failed") {
		t.Errorf("exit %d, %q", code, stderr)
	}
}

// TestStartupLogShowsProxyRules: the start-up log shows the rules the proxy
// holds, a preset's included, with the operator's rule replacing the
// preset's for the same pattern.
func TestStartupLogShowsProxyRules(t *testing.T) {
	_, logs, stop := startRun(t, []string{"--upstream", "redis://127.0.0.1:1", "--metrics-listen", "",
		"--preset", "bullmq", "--cache", "bull:*=1s"}, nil)
	want := `msg="proxy rules in effect" proxy.cache="[bull:*=1s]" proxy.absorb="[bull:*:meta=1m0s]" ` +
		`proxy.share_waits=[bull:*] proxy.cache_scripts=[5e107aa7dd123c4a80fc40151f8d25596c39353a] proxy.preset=bullmq`
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), want) {
		t.Errorf("the log lacks %q:\n%s", want, logs.String())
	}
}

// TestCacheScriptRejectedAtStart: a --cache-script that is no SHA1 stops
// funnel from starting (not only --check), with one clear line and exit 1.
func TestCacheScriptRejectedAtStart(t *testing.T) {
	stdout, stderr, code := runFunnel(t, "--cache-script xyz --metrics-listen= --listen 127.0.0.1:0", "REDIS_URL=redis://127.0.0.1:1")
	want := "funnel: --cache-script: \"xyz\" is not a script's SHA1: want 40 hex digits, as SCRIPT LOAD returns\n" +
		"funnel: 1 problem(s) in the configuration\n"
	if code != 1 || stderr != want || strings.Contains(stdout, "listening") {
		t.Errorf("exit %d\nstdout %q\nstderr %q\nwant   %q", code, stdout, stderr, want)
	}
}
