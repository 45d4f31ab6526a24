package deploy

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"go.yaml.in/yaml/v3"
)

// composeFile is the part of docker-compose.yml the tests check.
type composeFile struct {
	Services map[string]struct {
		Image       string
		Build       yaml.Node
		Command     []string
		Environment map[string]string
		Ports       []string
		DependsOn   yaml.Node `yaml:"depends_on"`
	}
}

// buildContext reads a service's build: a path, or context and dockerfile.
func buildContext(t *testing.T, n yaml.Node) (dir, dockerfile string) {
	t.Helper()
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Value, "Dockerfile"
	case yaml.MappingNode:
		var b struct{ Context, Dockerfile string }
		if err := n.Decode(&b); err != nil {
			t.Fatal(err)
		}
		if b.Dockerfile == "" {
			b.Dockerfile = "Dockerfile"
		}
		return b.Context, b.Dockerfile
	}
	return "", ""
}

// expand replaces compose's ${VAR:-default} with its default.
func expand(s string) string {
	return regexp.MustCompile(`\$\{\w+:-([^}]*)\}`).ReplaceAllString(s, "$1")
}

// lockVersions returns the versions a package-lock.json pins.
func lockVersions(t *testing.T, path string) map[string]string {
	t.Helper()
	var lock struct {
		Packages map[string]struct{ Version string }
	}
	if err := json.Unmarshal([]byte(readFile(t, path)), &lock); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]string{}
	for k, v := range lock.Packages {
		if name, ok := strings.CutPrefix(k, "node_modules/"); ok {
			out[name] = v.Version
		}
	}
	return out
}

// TestCompose checks deploy/compose: Redis, funnel built from the
// repository's Dockerfile with settings funnel reads, and the demo app's
// three programs pointed at funnel, with the same BullMQ and ioredis as
// compat/node.
func TestCompose(t *testing.T) {
	var cf composeFile
	if err := yaml.Unmarshal([]byte(readFile(t, "compose/docker-compose.yml")), &cf); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"redis", "funnel", "producer", "worker", "status"} {
		if _, ok := cf.Services[name]; !ok {
			t.Errorf("no %s service", name)
		}
	}
	fn := cf.Services["funnel"]
	dir, dockerfile := buildContext(t, fn.Build)
	if root, _ := filepath.Abs(filepath.Join("compose", dir)); root != mustAbs(t, "..") || dockerfile != "Dockerfile" {
		t.Errorf("funnel is built from %s/%s, want the repository's Dockerfile", dir, dockerfile)
	}
	if fn.Image != "funnel:latest" {
		t.Errorf("funnel image %q, want funnel:latest as make docker tags it", fn.Image)
	}
	env := map[string]string{}
	for k, v := range fn.Environment {
		env[k] = expand(v)
	}
	if env["FUNNEL_UPSTREAM"] != "redis://redis:6379" {
		t.Errorf("funnel's upstream is %q, want the redis service", env["FUNNEL_UPSTREAM"])
	}
	c := checkEnvNames(t, "compose's funnel", env)
	published := map[string]bool{}
	for _, p := range fn.Ports {
		published[port(t, p)] = true
	}
	for _, setting := range []string{"listen", "metrics-listen"} {
		if !published[port(t, c.value[setting])] {
			t.Errorf("funnel's --%s %s is not published (ports %v)", setting, c.value[setting], fn.Ports)
		}
	}

	// The demo app.
	pkg := struct{ Dependencies map[string]string }{}
	if err := json.Unmarshal([]byte(readFile(t, "compose/demo/package.json")), &pkg); err != nil {
		t.Fatal(err)
	}
	compat := lockVersions(t, "../compat/node/package-lock.json")
	demoLock := lockVersions(t, "compose/demo/package-lock.json")
	for _, dep := range []string{"bullmq", "ioredis"} {
		if v := pkg.Dependencies[dep]; v == "" || v != compat[dep] || demoLock[dep] != v {
			t.Errorf("%s: demo package.json %q, demo lock %q, compat/node lock %q: want one exact version", dep, v, demoLock[dep], compat[dep])
		}
	}
	if len(pkg.Dependencies) != 2 {
		t.Errorf("demo dependencies: %v", pkg.Dependencies)
	}
	demoDockerfile := readFile(t, "compose/demo/Dockerfile")
	for _, name := range []string{"producer", "worker", "status"} {
		s := cf.Services[name]
		if dir, _ := buildContext(t, s.Build); dir != "./demo" {
			t.Errorf("%s is built from %q, want ./demo", name, dir)
		}
		if len(s.Command) != 2 || s.Command[0] != "node" || s.Command[1] != name+".js" {
			t.Errorf("%s runs %v", name, s.Command)
			continue
		}
		if _, err := os.Stat("compose/demo/" + s.Command[1]); err != nil || !strings.Contains(demoDockerfile, " "+s.Command[1]) {
			t.Errorf("%s: %s is missing from demo/ or not copied by its Dockerfile (%v)", name, s.Command[1], err)
		}
		if want := "redis://funnel:" + port(t, c.value["listen"]); s.Environment["REDIS_URL"] != want {
			t.Errorf("%s's REDIS_URL is %q, want %s", name, s.Environment["REDIS_URL"], want)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestComposeDemoRuns runs the demo's producer, worker and status poll
// with node through funnel, configured as in docker-compose.yml, until
// every job is done; the worker then stops cleanly on SIGTERM. It uses the
// modules `make test` installs in compat/node, which TestCompose checks
// are the demo's versions.
func TestComposeDemoRuns(t *testing.T) {
	modules, err := filepath.Abs("../compat/node/node_modules")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(modules, "bullmq")); err != nil {
		t.Fatal("compat/node/node_modules is missing: run `make test`, which runs `npm ci` there")
	}
	var cf composeFile
	if err := yaml.Unmarshal([]byte(readFile(t, "compose/docker-compose.yml")), &cf); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for k, v := range cf.Services["funnel"].Environment {
		if k != "FUNNEL_UPSTREAM" && k != "FUNNEL_LISTEN" && k != "FUNNEL_METRICS_LISTEN" {
			env[k] = expand(v)
		}
	}
	rs := redistest.Start(t)
	addr, metricsAddr := startFunnel(t, rs, env)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	node := func(script string, vars ...string) (*exec.Cmd, *funneltest.Buffer) {
		cmd := exec.CommandContext(ctx, "node", script)
		cmd.Dir = "compose/demo"
		cmd.Env = append(os.Environ(), append([]string{"NODE_PATH=" + modules, "REDIS_URL=redis://" + addr, "QUEUE=demo-test"}, vars...)...)
		cmd.WaitDelay = 5 * time.Second
		out := &funneltest.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, out
	}
	worker, workerOut := node("worker.js", "WORK_MS=200", "WORKER_NAME=demo-worker")
	producer, producerOut := node("producer.js", "JOBS=5", "PRODUCE_EVERY_MS=100")
	status, statusOut := node("status.js", "POLL_MS=200", "EXIT_AFTER_COMPLETED=5", "NEW_CONNECTION=1")
	if err := producer.Wait(); err != nil {
		t.Fatalf("producer: %v\n%s", err, producerOut.String())
	}
	if err := status.Wait(); err != nil {
		t.Fatalf("status: %v\n%s\nworker:\n%s", err, statusOut.String(), workerOut.String())
	}
	if !strings.Contains(statusOut.String(), `"completed":5`) {
		t.Errorf("status never saw 5 completed jobs:\n%s", statusOut.String())
	}
	_ = worker.Process.Signal(os.Interrupt)
	if err := worker.Wait(); err != nil {
		t.Errorf("worker did not stop cleanly: %v\n%s", err, workerOut.String())
	}
	if n := strings.Count(workerOut.String(), "completed"); n != 5 {
		t.Errorf("worker completed %d jobs:\n%s", n, workerOut.String())
	}
	// Everything went through funnel.
	if m := scrape(t, metricsAddr); !strings.Contains(m, `funnel_client_commands_total{command="evalsha"}`) {
		t.Errorf("no BullMQ script went through funnel:\n%s", m)
	}
}
