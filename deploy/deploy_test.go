package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// The version and commit the tests stamp into their funnel binary.
const (
	testVersion = "v0.0.0-deploytest"
	testCommit  = "deadbee"
)

// funnelBin is the binary `make build` made for these tests; set once by
// TestMain, before any test runs.
var funnelBin string

// TestMain builds funnel once, with the Makefile, as `make build` does.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "funnel-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	funnelBin = filepath.Join(dir, "funnel")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, "make", "-C", "..", "build", "BIN="+funnelBin, "VERSION="+testVersion, "COMMIT="+testCommit)
	out, err := cmd.CombinedOutput()
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "make build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// funnelCmd runs the test binary with args and exactly env (plus PATH),
// bounded in time, and returns its stdout, stderr and exit code.
func funnelCmd(t *testing.T, env map[string]string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, funnelBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("funnel %v: %v", args, err)
	return "", "", -1
}

// checked is what `funnel --check` printed: each setting's value and source.
type checked struct {
	value, source map[string]string
	configFile    string
}

// check runs `funnel --check` with env and args and fails the test unless
// the configuration is valid.
func check(t *testing.T, env map[string]string, args ...string) checked {
	t.Helper()
	stdout, stderr, code := funnelCmd(t, env, append([]string{"--check"}, args...)...)
	if code != 0 {
		t.Fatalf("funnel --check %v with %v: exit %d\n%s%s", args, env, code, stdout, stderr)
	}
	c := checked{value: map[string]string{}, source: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		line := sc.Text()
		if f, ok := strings.CutPrefix(line, "config file: "); ok {
			c.configFile = f
			continue
		}
		// SETTING  VALUE  SOURCE, where a source is "default", "flag", or
		// "env NAME" / "file PATH:LINE".
		f := strings.Fields(line)
		if len(f) < 3 || f[0] == "SETTING" {
			continue
		}
		if n := len(f); f[n-2] == "env" || f[n-2] == "file" {
			c.value[f[0]], c.source[f[0]] = strings.Join(f[1:n-2], " "), f[n-2]+" "+f[n-1]
		} else {
			c.value[f[0]], c.source[f[0]] = strings.Join(f[1:n-1], " "), f[n-1]
		}
	}
	if len(c.value) < 20 {
		t.Fatalf("funnel --check printed too few settings:\n%s", stdout)
	}
	return c
}

// port returns the port of a host:port.
func port(t *testing.T, addr string) string {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("%q has no port", addr)
	}
	return addr[i+1:]
}

// runtimeEnv are environment variables the Go runtime reads, which an
// example may set beside funnel's own.
var runtimeEnv = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GOGC": true}

// checkEnvNames runs funnel --check with env and fails unless each FUNNEL_
// variable in it is one funnel reads: its setting's source names it (or,
// for FUNNEL_CONFIG, the config file is the one it names).
func checkEnvNames(t *testing.T, where string, env map[string]string) checked {
	t.Helper()
	c := check(t, env)
	read := map[string]bool{}
	for _, src := range c.source {
		if name, ok := strings.CutPrefix(src, "env "); ok {
			read[name] = true
		}
	}
	if c.configFile != "" && c.configFile == env["FUNNEL_CONFIG"] {
		read["FUNNEL_CONFIG"] = true
	}
	for name := range env {
		if !read[name] && !runtimeEnv[name] {
			t.Errorf("%s: funnel does not read %s", where, name)
		}
	}
	return c
}

// startFunnel runs the binary in front of rs with args until the test ends,
// and returns its client and metrics addresses.
func startFunnel(t *testing.T, rs *redistest.Server, env map[string]string, args ...string) (addr, metricsAddr string) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	metricsAddr = fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	cmd := exec.Command(funnelBin, append([]string{"--upstream", "redis://" + rs.Addr, "--listen", addr, "--metrics-listen", metricsAddr}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &funneltest.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("funnel: %v\n%s", err, logs.String())
			}
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("funnel did not stop on SIGINT\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			return addr, metricsAddr
		}
		select {
		case err := <-exited:
			t.Fatalf("funnel exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("funnel did not start:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scrape returns the body of funnel's /metrics.
func scrape(t *testing.T, metricsAddr string) string {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	return string(body)
}

// readFile returns a file of the repository, relative to deploy/.
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBuildStampsVersion: make build sets the version and commit that
// --version prints, and the version INFO shows (proxy.Version).
func TestBuildStampsVersion(t *testing.T) {
	stdout, _, code := funnelCmd(t, nil, "--version")
	if code != 0 || !strings.HasPrefix(stdout, "funnel "+testVersion+" (commit "+testCommit+", go1.") {
		t.Errorf("--version: exit %d, %q", code, stdout)
	}
	rs := redistest.Start(t)
	addr, _ := startFunnel(t, rs, nil)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 5 * time.Second})
	defer rdb.Close()
	if info, err := rdb.Info(context.Background(), "funnel").Result(); err != nil || !strings.Contains(info, "funnel_version:"+testVersion+"\r\n") {
		t.Errorf("INFO funnel: %q %v", info, err)
	}
}

// TestDockerfileBuildsWithMake: the image's binary comes from `make build`
// with the version and commit make docker passes, so it has the same
// ldflags as bin/funnel; and the tags agree with the README.
func TestDockerfileBuildsWithMake(t *testing.T) {
	dockerfile := readFile(t, "../Dockerfile")
	for _, want := range []string{"ARG VERSION=dev\n", "ARG COMMIT=unknown\n", `RUN make build VERSION="${VERSION}" COMMIT="${COMMIT}" BIN=/out/funnel` + "\n", "COPY --from=build /out/funnel /usr/local/bin/funnel\n"} {
		if !strings.Contains(dockerfile, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if strings.Contains(dockerfile, "go build") {
		t.Error("the Dockerfile runs go build itself; it must run make build")
	}
	makefile := readFile(t, "../Makefile")
	docker := regexp.MustCompile(`(?m)^docker:\n\t(.*)$`).FindStringSubmatch(makefile)
	if docker == nil {
		t.Fatal("no docker target in the Makefile")
	}
	for _, want := range []string{"--build-arg VERSION=$(VERSION)", "--build-arg COMMIT=$(COMMIT)", "-t $(IMAGE)", "-t funnel:latest"} {
		if !strings.Contains(docker[1], want) {
			t.Errorf("make docker lacks %q: %s", want, docker[1])
		}
	}
	readme := readFile(t, "../README.md")
	for _, m := range regexp.MustCompile(`docker run [^\n]* (funnel:\S+)`).FindAllStringSubmatch(readme, -1) {
		if m[1] != "funnel:latest" {
			t.Errorf("the README runs %s, which make docker does not tag", m[1])
		}
	}
}
