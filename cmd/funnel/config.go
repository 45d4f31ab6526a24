package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/funnel-proxy/funnel/proxy"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/spf13/pflag"
)

// errHelp is returned after --help printed the usage.
var errHelp = errors.New("help requested")

// config is every setting funnel takes, with where each came from. Its
// values are settled by precedence: flags, then environment variables,
// then the config file, then the defaults.
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
	maxMemory          int64
	exclusiveWait      time.Duration
	waitLinger         time.Duration
	pprof              bool
	procs              int
	maxExclusive       int
	exclusiveIdle      time.Duration
	maxMultiBytes      int
	coalesce           bool
	cache              []string
	cacheRules         []proxy.CacheRule
	absorb             []string
	absorbRules        []proxy.AbsorbRule
	shareWaits         []string
	preset             string
	cacheScripts       []string
	cacheMaxBytes      int64
	cacheMaxValue      int
	pricePer100k       float64

	// Actions: what to do instead of serving. They are not settings: no
	// environment variable or file key sets them (but FUNNEL_CONFIG names
	// the file, as --config does).
	version       bool
	check         bool
	checkUpstream bool
	configFile    string

	flags   *pflag.FlagSet    // holds the values above; its Value.String() is each setting's canonical form
	sources map[string]source // by setting name
}

// actions are the flags that are not settings.
var actions = map[string]bool{"help": true, "version": true, "check": true, "check-upstream": true, "config": true}

// source is where a setting's value came from.
type source struct {
	kind string // "default", "file", "env" or "flag"
	name string // the environment variable, or "file:line"; empty otherwise
}

func (s source) String() string {
	if s.name == "" {
		return s.kind
	}
	return s.kind + " " + s.name
}

// proxyInfoTTL is --info-ttl as proxy.Options takes it: there 0 means the
// default, and a negative TTL never reuses INFO.
func (c *config) proxyInfoTTL() time.Duration {
	if c.infoTTL == 0 {
		return -1
	}
	return c.infoTTL
}

// proxyWaitLinger is --wait-linger as proxy.Options.WaitLinger takes it,
// where 0 means the default and a negative value none.
func (c *config) proxyWaitLinger() time.Duration {
	if c.waitLinger == 0 {
		return -1
	}
	return c.waitLinger
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

// newFlagSet defines every flag, bound to c's fields.
func (c *config) newFlagSet(out io.Writer) *pflag.FlagSet {
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
	fs.StringVar(&c.metricsListen, "metrics-listen", "127.0.0.1:9121", "address for /metrics, /healthz, /readyz and the savings page at /; empty disables")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM, how long in-flight requests may take to finish")
	fs.StringVar(&c.tlsCAFile, "tls-ca-file", "", "PEM CA bundle to verify the upstream with (default: system roots)")
	fs.BoolVar(&c.tlsSkipVerify, "tls-skip-verify", false, "do not verify the upstream's certificate (insecure; tests only)")
	fs.IntVar(&c.protoMaxBulkLen, "proto-max-bulk-len", 512<<20, "largest argument a client may send, in bytes")
	fs.Int64Var(&c.clientOutputLimit, "client-output-limit", 512<<20, "reply bytes held for a client that does not read them before it is closed")
	fs.DurationVar(&c.clientWriteTimeout, "client-write-timeout", 30*time.Second, "longest a write to a client may block before it is closed")
	fs.DurationVar(&c.infoTTL, "info-ttl", proxy.DefaultInfoTTL, "how long a copy of the upstream's INFO may answer a new connection's handshake INFO; 0: never (every INFO is fetched). Later INFOs are always fetched")
	fs.Int64Var(&c.maxMemory, "max-memory", 1<<30, "request and reply bytes funnel holds for all clients before it stops reading from the clients that hold them")
	fs.DurationVar(&c.exclusiveWait, "exclusive-wait", 10*time.Second, "longest wait for an exclusive-lane connection before a WATCH or blocking command gets a funnel: error")
	fs.DurationVar(&c.waitLinger, "wait-linger", 30*time.Second, "how long a shared sorted-set pop (--share-waits; a BullMQ marker) stays upstream after its last waiter, for the next; 0: it ends with its waiters")
	fs.IntVar(&c.maxExclusive, "max-exclusive", 32, "exclusive upstream connections for blocking commands and WATCH spans")
	fs.DurationVar(&c.exclusiveIdle, "exclusive-idle-timeout", 60*time.Second, "how long an unused exclusive connection stays open")
	fs.IntVar(&c.maxMultiBytes, "max-multi-bytes", 64<<20, "largest transaction buffered between MULTI and EXEC, in bytes")
	fs.BoolVar(&c.coalesce, "coalesce", true, "merge identical read-only commands in flight at the same time into one upstream request")
	fs.StringArrayVar(&c.cache, "cache", nil, "cache reads of keys matching PATTERN for TTL: PATTERN=TTL, repeatable or comma separated (e.g. 'bull:*=2s')")
	fs.StringArrayVar(&c.absorb, "absorb", nil, "answer an HSET/HMSET of a hash matching PATTERN itself when the hash is known to hold those values, for WINDOW after funnel saw them written: PATTERN=WINDOW, repeatable or comma separated (e.g. 'bull:*:meta=60s'); see the README for the risk")
	fs.StringSliceVar(&c.shareWaits, "share-waits", nil, "globs of keys whose blocking waits clients share (BLPOP, BRPOP, BZPOPMIN, BZPOPMAX of one key; XREAD BLOCK of explicit IDs), repeatable or comma separated (e.g. 'bull:*')")
	fs.StringVar(&c.preset, "preset", "", "turn on the rules recommended for an app: bullmq (see the README); rules given besides add to it or replace its rule for the same pattern")
	fs.StringSliceVar(&c.cacheScripts, "cache-script", nil, "SHA1 of a Lua script that only reads, so EVAL/EVALSHA of it may be cached (repeatable)")
	fs.Int64Var(&c.cacheMaxBytes, "cache-max-bytes", 64<<20, "memory for cached replies; least recently used go first")
	fs.IntVar(&c.cacheMaxValue, "cache-max-value", 1<<20, "largest reply that is cached, in bytes")
	fs.Float64Var(&c.pricePer100k, "price-per-100k", 0.20, "what the upstream bills per 100,000 commands, in dollars, for the savings page's estimates (Upstash pay-as-you-go: 0.20)")
	fs.BoolVar(&c.pprof, "pprof", false, "serve Go profiles at /debug/pprof/ on the metrics address")
	fs.IntVar(&c.procs, "procs", 1, "CPU cores funnel runs Go code on at once (GOMAXPROCS), one client event loop each; 0 leaves Go's default, all cores, and GOMAXPROCS in the environment wins over the default")
	fs.StringVar(&c.configFile, "config", "", "YAML file of settings keyed by flag name (pool-size: 10); flags and environment variables override it")
	fs.VisitAll(func(f *pflag.Flag) {
		f.Usage += " [$" + envName(f.Name) + "]"
	})
	fs.BoolVarP(&c.version, "version", "V", false, "print the version, commit and Go version, and exit")
	fs.BoolVarP(&c.check, "check", "t", false, "check every flag, environment variable and config file setting, print the effective configuration, and exit (non-zero, one line per problem, if any is wrong)")
	fs.BoolVar(&c.checkUpstream, "check-upstream", false, "with --check: also connect and log in to the upstream once, and report how that went")
	fs.BoolP("help", "h", false, "show this help")
	return fs
}

// parseConfig settles every setting from args, the environment and the
// config file (--config or FUNNEL_CONFIG), and checks them all. It returns
// a *configError listing every problem found, errHelp after printing the
// usage for --help, or a config with only the version action set for
// --version.
func parseConfig(args []string, out io.Writer, getenv func(string) string) (*config, error) {
	c := &config{sources: map[string]source{}}
	fs := c.newFlagSet(out)
	c.flags = fs
	raw, err := parseRaw(fs, args)
	if err != nil {
		return nil, &configError{problems: []string{err.Error() + " (funnel --help lists the flags)"}}
	}
	if raw.given("help") {
		fmt.Fprintln(out, "Usage: funnel [flags]\n\nEvery flag can also be set by the environment variable shown after it, or\nin the YAML file given by --config, under the flag's name. Flags win over\nenvironment variables, and both over the file. SIGHUP re-reads them.")
		fs.PrintDefaults()
		return nil, errHelp
	}
	if raw.given("version") {
		c.version = true
		return c, nil
	}
	var problems []string
	for _, a := range raw.positional {
		problems = append(problems, fmt.Sprintf("unexpected argument %q: funnel takes only flags", a))
	}
	for name := range actions {
		if name != "help" && raw.given(name) {
			if err := fs.Lookup(name).Value.Set(raw.last(name)); err != nil {
				problems = append(problems, fmt.Sprintf("--%s: %v", name, err))
			}
		}
	}
	if !raw.given("config") {
		c.configFile = getenv("FUNNEL_CONFIG")
	}
	var file map[string]fileSetting
	if c.configFile != "" {
		var fileProblems []string
		file, fileProblems = readConfigFile(c.configFile, fs)
		problems = append(problems, fileProblems...)
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if actions[f.Name] {
			return
		}
		values, src := c.pick(f.Name, raw, getenv, file)
		c.sources[f.Name] = src
		for _, v := range values {
			if err := f.Value.Set(v); err != nil {
				problems = append(problems, c.label(f.Name)+": "+badValue(f, v, err))
			}
		}
	})
	if src := c.sources["procs"]; (src.kind == "default" || src.kind == "file") && getenv("GOMAXPROCS") != "" {
		// The operator set Go's own variable: keep it (env wins over file).
		_ = fs.Set("procs", "0")
		c.sources["procs"] = source{kind: "env", name: "GOMAXPROCS"}
	}
	problems = append(problems, c.validate()...)
	if len(problems) > 0 {
		return nil, &configError{problems: problems}
	}
	return c, nil
}

// pick returns the values that set a flag, by precedence, and their source.
// An empty environment variable counts as unset.
func (c *config) pick(name string, raw *rawArgs, getenv func(string) string, file map[string]fileSetting) ([]string, source) {
	if raw.given(name) {
		return raw.values[name], source{kind: "flag"}
	}
	if v := getenv(envName(name)); v != "" {
		return []string{v}, source{kind: "env", name: envName(name)}
	}
	if name == "upstream" {
		if v := getenv("REDIS_URL"); v != "" {
			return []string{v}, source{kind: "env", name: "REDIS_URL"}
		}
	}
	if fv, ok := file[name]; ok {
		return fv.values, source{kind: "file", name: fmt.Sprintf("%s:%d", c.configFile, fv.line)}
	}
	return nil, source{kind: "default"}
}

// label names a setting as the operator set it, for a problem: the flag,
// the environment variable, or the file line and key.
func (c *config) label(name string) string {
	switch src := c.sources[name]; src.kind {
	case "env":
		return src.name
	case "file":
		return src.name + ": " + name
	}
	return "--" + name
}

// badValue says why v is no value for f, in the operator's terms.
func badValue(f *pflag.Flag, v string, err error) string {
	switch f.Value.Type() {
	case "int", "int64":
		return fmt.Sprintf("%q is not a whole number (for example %s)", v, f.DefValue)
	case "duration":
		return fmt.Sprintf("%q is not a duration (for example %s; units ms, s, m, h)", v, f.DefValue)
	case "bool":
		return fmt.Sprintf("%q is not true or false", v)
	case "float64":
		return fmt.Sprintf("%q is not a number (for example %s)", v, f.DefValue)
	}
	return fmt.Sprintf("%q: %v", v, err)
}

// value returns a setting's canonical value as funnel holds it (durations
// as "30s", lists as "[a,b]"), secrets unmasked: for comparing configs.
func (c *config) value(name string) string {
	return c.flags.Lookup(name).Value.String()
}

// settings returns every setting's name, in the order --help lists them.
func (c *config) settings() []string {
	var names []string
	c.flags.VisitAll(func(f *pflag.Flag) {
		if !actions[f.Name] {
			names = append(names, f.Name)
		}
	})
	return names
}

// configError is every problem found in a configuration, one line each.
type configError struct {
	problems []string
}

func (e *configError) Error() string {
	return strings.Join(e.problems, "\n")
}

// rawArgs is the command line read without converting any value, so a bad
// value is one problem among others instead of the end of parsing.
type rawArgs struct {
	values     map[string][]string
	positional []string
}

func (r *rawArgs) given(name string) bool { return len(r.values[name]) > 0 }

func (r *rawArgs) last(name string) string {
	v := r.values[name]
	return v[len(v)-1]
}

// rawValue records each value a flag is given, as written.
type rawValue struct {
	name string
	typ  string
	into map[string][]string
}

func (v *rawValue) Set(s string) error {
	v.into[v.name] = append(v.into[v.name], s)
	return nil
}

func (v *rawValue) String() string { return strings.Join(v.into[v.name], ",") }

func (v *rawValue) Type() string { return v.typ }

// parseRaw reads args against a copy of fs whose flags only record their
// values. It fails only on the command line's syntax: an unknown flag, or
// a missing value.
func parseRaw(fs *pflag.FlagSet, args []string) (*rawArgs, error) {
	r := &rawArgs{values: map[string][]string{}}
	rfs := pflag.NewFlagSet("funnel", pflag.ContinueOnError)
	rfs.SetOutput(io.Discard)
	rfs.Usage = func() {}
	fs.VisitAll(func(f *pflag.Flag) {
		rf := rfs.VarPF(&rawValue{name: f.Name, typ: f.Value.Type(), into: r.values}, f.Name, f.Shorthand, f.Usage)
		rf.NoOptDefVal = f.NoOptDefVal // bools take no separate argument
	})
	if err := rfs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			r.values["help"] = []string{"true"}
			return r, nil
		}
		return nil, err
	}
	r.positional = rfs.Args()
	// --check=false does not ask for a check. (A value that is no bool
	// stays, and is reported when it is set.)
	for name := range actions {
		if vals := r.values[name]; len(vals) > 0 && fs.Lookup(name).Value.Type() == "bool" {
			if on, err := strconv.ParseBool(vals[len(vals)-1]); err == nil && !on {
				delete(r.values, name)
			}
		}
	}
	return r, nil
}
