package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
)

// runScript starts scripts/run.sh (what `make run` runs) with this test
// binary standing in for bin/funnel, and returns the command and its
// combined output.
func runScript(t *testing.T, ctx context.Context, args ...string) (*exec.Cmd, *funneltest.Buffer) {
	t.Helper()
	// run.sh passes funnel's flags as arguments; the test binary takes
	// them from FUNNEL_TEST_ARGS.
	wrapper := filepath.Join(t.TempDir(), "funnel")
	body := fmt.Sprintf("#!/bin/sh\nFUNNEL_TEST_MAIN=1 FUNNEL_TEST_ARGS=\"$*\" exec %q -test.run='^$'\n", os.Args[0])
	if err := os.WriteFile(wrapper, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "bash", append([]string{"../../scripts/run.sh", wrapper}, args...)...)
	cmd.Env = childEnv()
	cmd.WaitDelay = 5 * time.Second
	out := &funneltest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestRunScriptFails: make run exits non-zero when funnel cannot start,
// both with the throwaway redis-server and with an upstream given.
func TestRunScriptFails(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, args := range [][]string{
		{"--listen", busy.Addr().String(), "--metrics-listen="},
		{"--upstream", "redis://127.0.0.1:1", "--listen", busy.Addr().String(), "--metrics-listen="},
		{"--pool-size", "0"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd, out := runScript(t, ctx, args...)
		err := cmd.Wait()
		cancel()
		want := "address already in use"
		if args[0] == "--pool-size" {
			want = "funnel: --pool-size: must be at least 1, not 0"
		}
		if code := exitCode(err); code != 1 || !strings.Contains(out.String(), want) {
			t.Errorf("run.sh %v: exit %d (%v), want 1 and %q:\n%s", args, code, err, want, out.String())
		}
	}
}

// TestRunScriptServes: with no upstream, run.sh starts a throwaway
// redis-server; SIGHUP reaches funnel, which reloads; SIGTERM stops funnel
// and the redis-server, and the script exits 0.
func TestRunScriptServes(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, out := runScript(t, ctx, "--listen", addr, "--metrics-listen=")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitListening(t, addr, exited)
	m := regexp.MustCompile(`throwaway redis-server on (127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no throwaway redis-server:\n%s", out.String())
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, out, "reload: configuration unchanged", 1)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if code := exitCode(err); code != 0 {
			t.Fatalf("exit %d (%v):\n%s", code, err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run.sh did not exit after SIGTERM")
	}
	if !strings.Contains(out.String(), "msg=stopped") {
		t.Errorf("funnel did not stop gracefully:\n%s", out.String())
	}
	if c, err := net.DialTimeout("tcp", m[1], time.Second); err == nil {
		c.Close()
		t.Errorf("the throwaway redis-server on %s still runs", m[1])
	}
}
