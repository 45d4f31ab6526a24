package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeFile writes a config file in the test's directory and returns its
// path.
func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConfigPrecedence: flags win over environment variables, which win
// over the file, which wins over the defaults; for every kind of setting.
func TestConfigPrecedence(t *testing.T) {
	path := writeFile(t, "funnel.yaml", `# funnel settings
upstream: redis://file-host:6379
pool-size: 3
max-clients: 50
max-exclusive: 7
upstream-timeout: 9s
coalesce: false
cache: ['bull:*=2s', 'jobs:*=500ms']
cache-script:
  - 5e107aa7dd123c4a80fc40151f8d25596c39353a
deny: [flushall]
log-level: warn
`)
	env := map[string]string{
		"FUNNEL_CONFIG":        path,
		"FUNNEL_POOL_SIZE":     "4",  // env over file
		"FUNNEL_MAX_CLIENTS":   "60", // flag over env, below
		"FUNNEL_INFO_TTL":      "7s", // env over default
		"FUNNEL_DENY":          "",   // empty: unset, the file's stands
		"FUNNEL_LOG_LEVEL":     "error",
		"FUNNEL_UPSTREAM":      "",
		"REDIS_URL":            "", // none: the file's upstream stands
		"FUNNEL_MAX_EXCLUSIVE": "",
	}
	c, err := parseConfig([]string{"--max-clients", "70", "--log-level", "debug", "--cache", "x:*=1s"}, &bytes.Buffer{}, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, value, source string
	}{
		{"upstream", "redis://file-host:6379", "file " + path + ":2"},
		{"pool-size", "4", "env FUNNEL_POOL_SIZE"},
		{"max-clients", "70", "flag"},
		{"max-exclusive", "7", "file " + path + ":5"},
		{"upstream-timeout", "9s", "file " + path + ":6"},
		{"coalesce", "false", "file " + path + ":7"},
		{"cache", "[x:*=1s]", "flag"}, // a flag replaces the file's list
		{"cache-script", "[5e107aa7dd123c4a80fc40151f8d25596c39353a]", "file " + path + ":9"},
		{"deny", "[flushall]", "file " + path + ":11"},
		{"log-level", "debug", "flag"},
		{"info-ttl", "7s", "env FUNNEL_INFO_TTL"},
		{"listen", "127.0.0.1:6380", "default"},
	} {
		if got, src := c.value(tc.name), c.sources[tc.name].String(); got != tc.value || src != tc.source {
			t.Errorf("%s = %s from %s, want %s from %s", tc.name, got, src, tc.value, tc.source)
		}
	}
	if c.poolSize != 4 || c.maxExclusive != 7 || c.coalesce || c.upstreamTimeout != 9*time.Second || len(c.cacheRules) != 1 {
		t.Errorf("typed values: %+v", c)
	}

	// Without the flags, the environment wins; without either, the file.
	c, err = parseConfig(nil, &bytes.Buffer{}, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	if c.maxClients != 60 || c.logLevel != "error" || len(c.cacheRules) != 2 || c.cacheRules[1].TTL != 500*time.Millisecond {
		t.Errorf("env over file: max-clients %d, log-level %s, rules %v", c.maxClients, c.logLevel, c.cacheRules)
	}
	env["REDIS_URL"] = "redis://env-host:1"
	if c, err = parseConfig(nil, &bytes.Buffer{}, envOf(env)); err != nil || c.upstream != "redis://env-host:1" || c.sources["upstream"].String() != "env REDIS_URL" {
		t.Errorf("REDIS_URL over the file: %v %v", c, err)
	}
	// --config names the file as FUNNEL_CONFIG does, and wins over it.
	other := writeFile(t, "other.yaml", "upstream: redis://other:1\npool-size: 9\n")
	if c, err = parseConfig([]string{"--config", other}, &bytes.Buffer{}, envOf(map[string]string{"FUNNEL_CONFIG": path})); err != nil || c.poolSize != 9 || c.configFile != other {
		t.Errorf("--config: %v %v", c, err)
	}
	// GOMAXPROCS in the environment wins over a file's procs, as over the default.
	procs := writeFile(t, "procs.yaml", "upstream: redis://h:1\nprocs: 2\n")
	if c, err = parseConfig([]string{"--config", procs}, &bytes.Buffer{}, envOf(map[string]string{"GOMAXPROCS": "3"})); err != nil || c.procs != 0 {
		t.Errorf("GOMAXPROCS over the file: %v %v", c, err)
	}
}

// TestConfigFileProblems lists every wrong key of a file, with its line.
func TestConfigFileProblems(t *testing.T) {
	path := writeFile(t, "bad.yaml", `upstream: redis://h:1
pool_size: 3
poolsize: 4
pool-size: many
listen: [a, b]
cache: {bull: 2s}
check: true
config: other.yaml
deny: [flushall, [nested]]
upstream: redis://again:1
`)
	_, err := parseConfig([]string{"--config", path}, &bytes.Buffer{}, envOf(nil))
	var ce *configError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v", err)
	}
	want := []string{
		path + `:2: unknown setting "pool_size" (did you mean pool-size?)`,
		path + `:3: unknown setting "poolsize" (the keys are the flags' names, as funnel --help lists them)`,
		path + `:5: listen: takes one value, not a list`,
		path + `:6: cache: want a value or a list of values, not a mapping`,
		path + `:7: check: an action, not a setting; give it on the command line`,
		path + `:8: config: a config file cannot name another one`,
		path + `:9: deny: list items must be plain values`,
		path + `:10: upstream: given twice (also on line 1)`,
		path + `:4: pool-size: "many" is not a whole number (for example 10)`,
	}
	if got := strings.Join(ce.problems, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}

	for _, tc := range []struct{ body, want string }{
		{"- a\n- b\n", ":1: want a mapping of setting: value"},
		{"pool-size: [\n", ": not YAML: line 1: did not find expected node content"},
		{"", ""}, // an empty file sets nothing
	} {
		_, err := parseConfig([]string{"--config", writeFile(t, "f.yaml", tc.body)}, &bytes.Buffer{}, envOf(nil))
		if tc.want == "" {
			if !errors.As(err, &ce) || len(ce.problems) != 1 || !strings.HasPrefix(ce.problems[0], "no upstream") {
				t.Errorf("empty file: %v", err)
			}
			continue
		}
		// The file's problem, then the missing upstream it did not give.
		if !errors.As(err, &ce) || len(ce.problems) != 2 || !strings.Contains(ce.problems[0], tc.want) {
			t.Errorf("%q: %v, want %q", tc.body, err, tc.want)
		}
	}
	_, err = parseConfig(nil, &bytes.Buffer{}, envOf(map[string]string{"FUNNEL_CONFIG": "/nonexistent/funnel.yaml", "REDIS_URL": "redis://h:1"}))
	if err == nil || err.Error() != "config file: open /nonexistent/funnel.yaml: no such file or directory" {
		t.Errorf("missing file: %v", err)
	}
}
