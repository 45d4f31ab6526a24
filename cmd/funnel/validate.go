package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/proxy"
)

// validate checks the settings' meaning, now that each has a value of the
// right type, and returns one line per problem. It also fills cacheRules.
func (c *config) validate() []string {
	var problems []string
	bad := func(name, format string, args ...any) {
		problems = append(problems, c.label(name)+": "+fmt.Sprintf(format, args...))
	}
	problems = append(problems, c.validateUpstream()...)

	for _, n := range []struct {
		name string
		v    int64
		min  int64
	}{
		{"pool-size", int64(c.poolSize), 1},
		{"max-clients", int64(c.maxClients), 1},
		{"max-exclusive", int64(c.maxExclusive), 1},
		{"procs", int64(c.procs), 0},
		{"proto-max-bulk-len", int64(c.protoMaxBulkLen), 1},
		{"client-output-limit", c.clientOutputLimit, 1},
		{"max-memory", c.maxMemory, 1 << 20},
		{"max-multi-bytes", int64(c.maxMultiBytes), 1},
		{"cache-max-bytes", c.cacheMaxBytes, 1},
		{"cache-max-value", int64(c.cacheMaxValue), 1},
	} {
		if n.v < n.min {
			what := "must be at least " + strconv.FormatInt(n.min, 10)
			if n.name == "procs" {
				what = "must be 0 (Go's default) or more"
			}
			bad(n.name, "%s, not %d", what, n.v)
		}
	}
	if c.cacheMaxValue > 0 && c.cacheMaxBytes > 0 && int64(c.cacheMaxValue) > c.cacheMaxBytes {
		bad("cache-max-value", "%d is more than --cache-max-bytes %d: no reply that large could be cached", c.cacheMaxValue, c.cacheMaxBytes)
	}

	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"upstream-timeout", c.upstreamTimeout},
		{"dial-timeout", c.dialTimeout},
		{"client-write-timeout", c.clientWriteTimeout},
		{"exclusive-idle-timeout", c.exclusiveIdle},
		{"exclusive-wait", c.exclusiveWait},
	} {
		if d.v <= 0 {
			bad(d.name, "must be a positive duration, not %v", d.v)
		}
	}
	if c.pricePer100k < 0 || math.IsNaN(c.pricePer100k) || math.IsInf(c.pricePer100k, 0) {
		bad("price-per-100k", "must be a price of 0 or more, in dollars, not %v", c.pricePer100k)
	}
	if c.waitLinger < 0 {
		bad("wait-linger", "must not be negative, not %v (0 means a shared pop ends with its waiters)", c.waitLinger)
	}
	if c.infoTTL < 0 {
		bad("info-ttl", "must not be negative, not %v (0 means every INFO is fetched)", c.infoTTL)
	}
	if c.maxMemory > 0 && int64(c.protoMaxBulkLen) > c.maxMemory {
		bad("max-memory", "%d is less than --proto-max-bulk-len %d: a request that large could never be read", c.maxMemory, c.protoMaxBulkLen)
	}
	if c.shutdownTimeout < 0 {
		bad("shutdown-timeout", "must not be negative, not %v", c.shutdownTimeout)
	}

	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.logLevel)); err != nil {
		bad("log-level", "%q is not debug, info, warn or error", c.logLevel)
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		bad("log-format", "%q is not text or json", c.logFormat)
	}

	if err := checkAddr(c.listen, true); err != nil {
		bad("listen", "%v", err)
	}
	if c.metricsListen != "" {
		if err := checkAddr(c.metricsListen, false); err != nil {
			bad("metrics-listen", "%v", err)
		} else if c.metricsListen == c.listen {
			bad("metrics-listen", "%s is also --listen: give the metrics their own port", c.metricsListen)
		}
	} else if c.pprof {
		bad("pprof", "profiles are served on --metrics-listen, which is empty")
	}

	c.cacheRules = nil
	seen := map[string]bool{}
	for _, v := range c.cache {
		for _, rule := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
			cr, err := proxy.ParseCacheRule(rule)
			if err != nil {
				bad("cache", "%v", err)
				continue
			}
			if seen[cr.Pattern] {
				bad("cache", "pattern %q has two rules: keep one", cr.Pattern)
				continue
			}
			seen[cr.Pattern] = true
			c.cacheRules = append(c.cacheRules, cr)
		}
	}
	c.absorbRules = nil
	clear(seen)
	for _, v := range c.absorb {
		for _, rule := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
			ar, err := proxy.ParseAbsorbRule(rule)
			if err != nil {
				bad("absorb", "%v", err)
				continue
			}
			if seen[ar.Pattern] {
				bad("absorb", "pattern %q has two rules: keep one", ar.Pattern)
				continue
			}
			seen[ar.Pattern] = true
			c.absorbRules = append(c.absorbRules, ar)
		}
	}
	if c.preset != "" {
		if _, ok := proxy.Presets[c.preset]; !ok {
			bad("preset", "%q is not a preset funnel knows: the one there is is bullmq", c.preset)
		}
	}
	for _, sha := range c.cacheScripts {
		if !isSHA1(strings.TrimSpace(sha)) {
			bad("cache-script", "%q is not a script's SHA1: want 40 hex digits, as SCRIPT LOAD returns", sha)
		}
	}
	if len(c.cacheScripts) > 0 && !c.coalesce && len(c.cacheRules) == 0 && c.preset == "" {
		bad("cache-script", "has no effect with --coalesce=false and no --cache rule: a script's reply is cached only for keys a rule matches")
	}
	for _, d := range c.deny {
		if err := checkDeny(d); err != nil {
			bad("deny", "%v", err)
		}
	}
	return problems
}

// validateUpstream checks the upstream URL and the TLS options that go
// with it.
func (c *config) validateUpstream() []string {
	if c.upstream == "" {
		return []string{"no upstream: set --upstream, FUNNEL_UPSTREAM or REDIS_URL (or upstream: in the --config file)"}
	}
	var problems []string
	bad := func(name, format string, args ...any) {
		problems = append(problems, c.label(name)+": "+fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(c.upstream)
	if err != nil {
		// url.Error quotes the whole URL, password included: keep its cause only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		bad("upstream", "not a URL (%v); want redis:// or rediss://[user:password@]host:port[/db]", err)
		return problems
	}
	shown := u.Redacted()
	switch u.Scheme {
	case "redis", "rediss", "unix":
	default:
		bad("upstream", "%s: the scheme must be redis:// or rediss:// (TLS)", shown)
		return problems
	}
	tlsOn := u.Scheme == "rediss"
	if c.tlsSkipVerify && !tlsOn {
		bad("tls-skip-verify", "set, but the upstream %s does not use TLS: use rediss:// or drop --tls-skip-verify", shown)
	}
	if c.tlsCAFile != "" && !tlsOn {
		bad("tls-ca-file", "set, but the upstream %s does not use TLS: use rediss:// or drop --tls-ca-file", shown)
	}
	if c.tlsCAFile != "" && c.tlsSkipVerify {
		bad("tls-skip-verify", "set together with --tls-ca-file, which it makes pointless: drop one")
	}
	if _, err := pool.ParseURL(c.upstream, pool.TLSOptions{CAFile: c.tlsCAFile, InsecureSkipVerify: c.tlsSkipVerify}); err != nil {
		msg := err.Error()
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
		name := "upstream"
		if strings.Contains(msg, "tls ca file") {
			name = "tls-ca-file"
		}
		bad(name, "%s", msg)
	}
	return problems
}

// checkAddr checks an address to listen on: host:port with a numeric port
// (or a service name), or, when unix is allowed, a socket path in a
// directory that exists.
func checkAddr(addr string, unix bool) error {
	if strings.Contains(addr, "/") {
		if !unix {
			return fmt.Errorf("%q: want host:port (a unix socket is for --listen only)", addr)
		}
		dir := filepath.Dir(addr)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("%q: the socket's directory %s does not exist", addr, dir)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port, like 127.0.0.1:6380 or 0.0.0.0:6380", addr)
	}
	if strings.ContainsAny(host, " \t") {
		return fmt.Errorf("%q: the host has a space in it", addr)
	}
	if n, err := strconv.Atoi(port); err == nil {
		if n < 0 || n > 65535 {
			return fmt.Errorf("%q: port %d is out of range (0-65535)", addr, n)
		}
		return nil
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("%q: port %q is not a number", addr, port)
	}
	return nil
}

// checkDeny checks one --deny entry: a command ("flushall") or a command
// and its subcommand ("config set"). A command outside funnel's table (a
// module's, say) may be denied; a subcommand of a known command must exist.
func checkDeny(entry string) error {
	words := strings.Fields(strings.ReplaceAll(entry, "|", " "))
	switch {
	case len(words) == 0:
		return errors.New("an empty entry")
	case len(words) > 2:
		return fmt.Errorf("%q: want a command or a command and a subcommand, like \"config set\"", entry)
	}
	for _, w := range words {
		for _, r := range w {
			if r <= ' ' || r > '~' || r == '*' || r == '?' {
				return fmt.Errorf("%q: a command name has no %q (no globs)", entry, r)
			}
		}
	}
	if len(words) == 2 {
		args := [][]byte{[]byte(words[0]), []byte(words[1])}
		// Lookup returns the subcommand when it exists, else the command.
		switch info := command.Lookup(args); {
		case info == nil, strings.Contains(info.Name, "|"):
		case info.Subcommands == nil:
			return fmt.Errorf("%q: %s has no subcommands", entry, strings.ToUpper(words[0]))
		default:
			return fmt.Errorf("%q: %s has no subcommand %s", entry, strings.ToUpper(words[0]), strings.ToUpper(words[1]))
		}
	}
	return nil
}

// isSHA1 reports whether s is 40 hex digits.
func isSHA1(s string) bool {
	if len(s) != 40 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}
