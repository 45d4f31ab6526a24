// Command funnel is a Redis sidecar: it accepts any number of Redis clients
// and sends their commands through a small fixed pool of upstream
// connections, answering the handshake itself.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/funnel-proxy/funnel/internal/buildinfo"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/proxy"
	"github.com/funnel-proxy/funnel/savings"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP re-reads the configuration; without this it would end the
	// process, which drops every client's connection.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := runWithReload(ctx, os.Args[1:], os.Stdout, os.Getenv, hup); err != nil {
		if errors.Is(err, errHelp) {
			return
		}
		var ce *configError
		if errors.As(err, &ce) {
			for _, p := range ce.problems {
				fmt.Fprintln(os.Stderr, "funnel:", p)
			}
			fmt.Fprintf(os.Stderr, "funnel: %d problem(s) in the configuration\n", len(ce.problems))
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "funnel:", err)
		os.Exit(1)
	}
}

// run starts funnel and serves until ctx ends, then shuts down gracefully.
// It returns nil after a clean shutdown.
func run(ctx context.Context, args []string, stdout io.Writer, getenv func(string) string) error {
	return runWithReload(ctx, args, stdout, getenv, nil)
}

// runWithReload is run, re-reading the configuration each time hup
// delivers (main sends SIGHUP there; a nil hup never delivers). It also
// carries out --version and --check instead of serving.
func runWithReload(ctx context.Context, args []string, stdout io.Writer, getenv func(string) string, hup <-chan os.Signal) error {
	cfg, err := parseConfig(args, stdout, getenv)
	if err != nil {
		return err
	}
	switch {
	case cfg.version:
		fmt.Fprintln(stdout, buildinfo.String())
		return nil
	case cfg.check || cfg.checkUpstream:
		printConfig(stdout, cfg)
		if cfg.checkUpstream {
			return checkUpstream(ctx, stdout, cfg)
		}
		return nil
	}
	level := new(slog.LevelVar)
	lv, err := parseLevel(cfg.logLevel)
	if err != nil {
		return err
	}
	level.Set(lv)
	log, err := newLogger(stdout, level, cfg.logFormat)
	if err != nil {
		return err
	}
	if cfg.procs > 0 {
		// One core by default: a proxy's goroutines mostly hand requests to
		// each other, and on one thread a hand-off is a cheap switch rather
		// than a wake-up of another thread (see bench/README.md).
		runtime.GOMAXPROCS(cfg.procs)
	}
	upstream, err := pool.ParseURL(cfg.upstream, pool.TLSOptions{CAFile: cfg.tlsCAFile, InsecureSkipVerify: cfg.tlsSkipVerify})
	if err != nil {
		return err
	}
	if cfg.tlsSkipVerify {
		log.Warn("TLS CERTIFICATE VERIFICATION IS OFF (--tls-skip-verify): the upstream's identity is not checked; never use this in production")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)

	p := pool.New(upstream, pool.Options{
		Size: cfg.poolSize, Timeout: cfg.upstreamTimeout, DialTimeout: cfg.dialTimeout,
		MaxExclusive: cfg.maxExclusive, ExclusiveIdle: cfg.exclusiveIdle,
		Logger: log, Metrics: m,
	})
	popts := proxy.Options{
		MaxClients: cfg.maxClients, RequirePass: cfg.requirePass, Deny: cfg.deny,
		Limits:            cfg.limits(),
		ClientOutputLimit: cfg.clientOutputLimit, ClientWriteTimeout: cfg.clientWriteTimeout,
		InfoTTL: cfg.proxyInfoTTL(), MaxMultiBytes: cfg.maxMultiBytes,
		MaxMemory: cfg.maxMemory, ExclusiveWait: cfg.exclusiveWait, WaitLinger: cfg.proxyWaitLinger(),
		DisableCoalesce: !cfg.coalesce, CacheRules: cfg.cacheRules, CacheScripts: cfg.cacheScripts,
		CacheMaxBytes: cfg.cacheMaxBytes, CacheMaxValue: cfg.cacheMaxValue,
		AbsorbRules: cfg.absorbRules, ShareWaits: cfg.shareWaits, Preset: cfg.preset,
		Logger: log, Metrics: m,
	}
	if preset, ok := proxy.Presets[cfg.preset]; ok {
		log.Info("preset "+preset.Name, "rules", preset.String())
	}
	srv := proxy.New(p, popts)

	ln, err := listen(cfg.listen)
	if err != nil {
		p.Close(context.Background())
		return err
	}
	var admin *http.Server
	if cfg.metricsListen != "" {
		page := savings.New(m, savings.Options{PricePer100k: cfg.pricePer100k})
		defer page.Close()
		admin, err = startAdmin(cfg.metricsListen, cfg.pprof, reg, p, page, log)
		if err != nil {
			ln.Close()
			p.Close(context.Background())
			return err
		}
	}
	log.Info("funnel listening", "listen", ln.Addr().String(), "upstream", upstream.String(),
		"pool_size", cfg.poolSize, "metrics", cfg.metricsListen, "version", buildinfo.Version)
	logConfig(log, cfg)
	// The rules as the proxy holds them, the preset's merged in: the lines
	// above show only what the operator set.
	log.Info("proxy rules in effect", "proxy", srv.Settings())
	reloads := newReloadState(cfg, args, getenv, level, srv, log)
	reloads.effective = srv.Settings

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
wait:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "timeout", cfg.shutdownTimeout)
			break wait
		case err = <-serveErr:
			log.Error("serve", "err", err)
			break wait
		case <-hup:
			log.Info("SIGHUP: reloading the configuration")
			reloads.reload()
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Warn("shutdown deadline passed; clients closed with requests in flight", "err", serr)
	}
	p.Close(sctx)
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	if strings.HasPrefix(ln.Addr().Network(), "unix") {
		_ = os.Remove(cfg.listen)
	}
	log.Info("stopped")
	return err
}

// listen opens a TCP address, or a unix socket when the address is a path.
func listen(addr string) (net.Listener, error) {
	if strings.Contains(addr, "/") {
		_ = os.Remove(addr) // a stale socket from an earlier run
		return net.Listen("unix", addr)
	}
	return net.Listen("tcp", addr)
}

// startAdmin serves /metrics, /healthz (the process is up), /readyz (the
// upstream can be reached), the savings page at / with its data at
// /api/savings, and, when asked, /debug/pprof/.
func startAdmin(addr string, withPprof bool, reg *prometheus.Registry, p *pool.Pool, page *savings.Page, log *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	page.Register(mux)
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := p.Ready(ctx); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	return hs, nil
}
