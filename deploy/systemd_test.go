package deploy

import (
	"bufio"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// unitFile is a systemd unit: section, then key, then every value given
// (a key may repeat).
type unitFile map[string]map[string][]string

// parseUnit reads a unit file: [Section] lines, Key=Value lines, comments
// starting with # or ;, and lines continued with a trailing backslash.
func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	pending := ""
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending != "" {
			line, pending = pending+" "+line, ""
		}
		if strings.HasSuffix(line, "\\") {
			pending = strings.TrimSuffix(line, "\\")
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		case section == "":
			t.Fatalf("line %d: %q before any section", n, line)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("line %d: %q is no Key=Value", n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// one returns a key's only value, failing the test if it is not set once.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Errorf("[%s] %s is set %d times, want once", section, key, len(v))
		return ""
	}
	return v[0]
}

// TestSystemdUnit checks deploy/systemd/funnel.service: hardened, SIGHUP
// on reload, and its ExecStart and ExecStartPre commands are valid funnel
// command lines with the example config file and environment.
func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, readFile(t, "systemd/funnel.service"))
	for key, want := range map[string]string{
		"Type":                    "exec",
		"DynamicUser":             "yes",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectControlGroups":    "yes",
		"RestrictNamespaces":      "yes",
		"RestrictSUIDSGID":        "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"SystemCallArchitectures": "native",
		"SystemCallErrorNumber":   "EPERM",
		"KillSignal":              "SIGTERM",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"Restart":                 "on-failure",
		"EnvironmentFile":         "/etc/funnel/funnel.env",
	} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("[Service] %s=%q, want %q", key, got, want)
		}
	}
	if f := u["Service"]["SystemCallFilter"]; len(f) == 0 || f[0] != "@system-service" {
		t.Errorf("SystemCallFilter %v: want @system-service first", f)
	}
	// Go raises its open-file limit with setrlimit at start; denying
	// @resources would make that fail.
	for _, f := range u["Service"]["SystemCallFilter"] {
		if strings.Contains(f, "@resources") {
			t.Errorf("SystemCallFilter %q denies @resources, which Go's runtime uses", f)
		}
	}
	if d, err := time.ParseDuration(u.one(t, "Service", "TimeoutStopSec")); err != nil || d <= 10*time.Second {
		t.Errorf("TimeoutStopSec %v leaves funnel's --shutdown-timeout (10s) no room (%v)", d, err)
	}
	if u.one(t, "Install", "WantedBy") != "multi-user.target" {
		t.Error("not wanted by multi-user.target")
	}

	// ExecStart and ExecStartPre, with the example files in place of
	// /etc/funnel's, are command lines funnel accepts.
	env := map[string]string{}
	for _, line := range strings.Split(readFile(t, "systemd/funnel.env.example"), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			env[k] = v
		}
	}
	if env["FUNNEL_UPSTREAM"] == "" {
		t.Error("funnel.env.example sets no FUNNEL_UPSTREAM")
	}
	example, _ := filepath.Abs("systemd/funnel.yaml")
	for _, key := range []string{"ExecStartPre", "ExecStart"} {
		args := strings.Fields(u.one(t, "Service", key))
		if len(args) == 0 || args[0] != "/usr/local/bin/funnel" {
			t.Errorf("%s runs %v, want /usr/local/bin/funnel", key, args)
			continue
		}
		args = args[1:]
		for i, a := range args {
			if a == "/etc/funnel/funnel.yaml" {
				args[i] = example
			}
		}
		c := check(t, env, args...)
		if c.configFile != example {
			t.Errorf("%s does not read the config file: %v", key, args)
		}
		if c.source["cache"] != "file "+example+":8" || c.source["upstream"] != "env FUNNEL_UPSTREAM" {
			t.Errorf("%s: cache from %q, upstream from %q", key, c.source["cache"], c.source["upstream"])
		}
		if key == "ExecStartPre" && !strings.Contains(strings.Join(args, " "), "--check") {
			t.Error("ExecStartPre does not check the configuration")
		}
	}
}
