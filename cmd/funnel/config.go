package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/funnel-proxy/funnel/proxy"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/spf13/pflag"
)

// errHelp is returned after --help printed the usage.
var errHelp = errors.New("help requested")

// config is every setting funnel takes, from flags or their environment
// variables.
type config struct {
	listen             string
	upstream           string
	poolSize           int
	upstreamTimeout    time.Duration
	dialTimeout        time.Duration
	maxClients         int
	requirePass        string
	deny               []string
	metricsListen      string
	logLevel           string
	logFormat          string
	shutdownTimeout    time.Duration
	tlsCAFile          string
	tlsSkipVerify      bool
	protoMaxBulkLen    int
	clientOutputLimit  int64
	clientWriteTimeout time.Duration
	infoTTL            time.Duration
	pprof              bool
	procs              int
	maxExclusive       int
	exclusiveIdle      time.Duration
	maxMultiBytes      int
	coalesce           bool
	cache              []string
	cacheRules         []proxy.CacheRule
	cacheScripts       []string
	cacheMaxBytes      int64
	cacheMaxValue      int
}

func (c *config) limits() resp.Limits {
	l := resp.DefaultLimits
	l.MaxBulk = c.protoMaxBulkLen
	return l
}

// envName is the environment variable that sets a flag: FUNNEL_ and the
// flag's name in upper case with '-' as '_'.
func envName(flag string) string {
	return "FUNNEL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parseConfig reads flags, then fills every flag not given on the command
// line from its environment variable. The upstream falls back to REDIS_URL.
func parseConfig(args []string, out io.Writer, getenv func(string) string) (*config, error) {
	c := &config{}
	fs := pflag.NewFlagSet("funnel", pflag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:6380", "address for clients: host:port, or a unix socket path")
	fs.StringVar(&c.upstream, "upstream", "", "upstream Redis URL, redis:// or rediss://[user:password@]host:port[/db] (falls back to REDIS_URL)")
	fs.IntVar(&c.poolSize, "pool-size", 10, "shared upstream connections")
	fs.DurationVar(&c.upstreamTimeout, "upstream-timeout", 30*time.Second, "longest wait for an upstream reply before the connection is failed")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 5*time.Second, "upstream connect, TLS and login timeout")
	fs.IntVar(&c.maxClients, "max-clients", 10000, "most client connections at once")
	fs.StringVar(&c.requirePass, "requirepass", "", "password clients must AUTH with (funnel's own, not the upstream's)")
	fs.StringSliceVar(&c.deny, "deny", nil, "more commands to refuse, comma separated (e.g. flushall,\"config set\")")
	fs.StringVar(&c.metricsListen, "metrics-listen", "127.0.0.1:9121", "address for /metrics, /healthz and /readyz; empty disables")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM, how long in-flight requests may take to finish")
	fs.StringVar(&c.tlsCAFile, "tls-ca-file", "", "PEM CA bundle to verify the upstream with (default: system roots)")
	fs.BoolVar(&c.tlsSkipVerify, "tls-skip-verify", false, "do not verify the upstream's certificate (insecure; tests only)")
	fs.IntVar(&c.protoMaxBulkLen, "proto-max-bulk-len", 512<<20, "largest argument a client may send, in bytes")
	fs.Int64Var(&c.clientOutputLimit, "client-output-limit", 512<<20, "reply bytes held for a client that does not read them before it is closed")
	fs.DurationVar(&c.clientWriteTimeout, "client-write-timeout", 30*time.Second, "longest a write to a client may block before it is closed")
	fs.DurationVar(&c.infoTTL, "info-ttl", 5*time.Second, "how long the upstream's INFO reply is reused")
	fs.IntVar(&c.maxExclusive, "max-exclusive", 32, "exclusive upstream connections for blocking commands and WATCH spans")
	fs.DurationVar(&c.exclusiveIdle, "exclusive-idle-timeout", 60*time.Second, "how long an unused exclusive connection stays open")
	fs.IntVar(&c.maxMultiBytes, "max-multi-bytes", 64<<20, "largest transaction buffered between MULTI and EXEC, in bytes")
	fs.BoolVar(&c.coalesce, "coalesce", true, "merge identical read-only commands in flight at the same time into one upstream request")
	fs.StringArrayVar(&c.cache, "cache", nil, "cache reads of keys matching PATTERN for TTL: PATTERN=TTL, repeatable or comma separated (e.g. 'bull:*=2s')")
	fs.StringSliceVar(&c.cacheScripts, "cache-script", nil, "SHA1 of a Lua script that only reads, so EVAL/EVALSHA of it may be cached (repeatable)")
	fs.Int64Var(&c.cacheMaxBytes, "cache-max-bytes", 64<<20, "memory for cached replies; least recently used go first")
	fs.IntVar(&c.cacheMaxValue, "cache-max-value", 1<<20, "largest reply that is cached, in bytes")
	fs.BoolVar(&c.pprof, "pprof", false, "serve Go profiles at /debug/pprof/ on the metrics address")
	fs.IntVar(&c.procs, "procs", 1, "CPU cores funnel runs Go code on at once (GOMAXPROCS); 0 leaves Go's default, all cores, and GOMAXPROCS in the environment wins over the default")
	fs.VisitAll(func(f *pflag.Flag) {
		f.Usage += " [$" + envName(f.Name) + "]"
	})
	help := fs.BoolP("help", "h", false, "show this help")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, errHelp
		}
		return nil, err
	}
	if *help {
		fmt.Fprintln(out, "Usage: funnel [flags]\n\nEvery flag can also be set by the environment variable shown after it.")
		fs.PrintDefaults()
		return nil, errHelp
	}
	var envErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s: %w", envName(f.Name), err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if c.upstream == "" {
		c.upstream = getenv("REDIS_URL")
	}
	if f := fs.Lookup("procs"); !f.Changed && getenv("GOMAXPROCS") != "" {
		c.procs = 0 // the operator set Go's own variable: keep it
	}
	for _, v := range c.cache {
		for _, rule := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
			cr, err := proxy.ParseCacheRule(rule)
			if err != nil {
				return nil, fmt.Errorf("--cache: %w", err)
			}
			c.cacheRules = append(c.cacheRules, cr)
		}
	}
	switch {
	case c.upstream == "":
		return nil, errors.New("no upstream: set --upstream, FUNNEL_UPSTREAM or REDIS_URL")
	case c.poolSize < 1:
		return nil, errors.New("--pool-size must be at least 1")
	case c.maxClients < 1:
		return nil, errors.New("--max-clients must be at least 1")
	case c.maxExclusive < 1:
		return nil, errors.New("--max-exclusive must be at least 1")
	case c.procs < 0:
		return nil, errors.New("--procs must be 0 (Go's default) or more")
	case c.protoMaxBulkLen < 1:
		return nil, errors.New("--proto-max-bulk-len must be positive")
	}
	return c, nil
}
