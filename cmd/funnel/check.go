package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus"
)

// errUpstreamCheck wraps what --check-upstream found wrong.
var errUpstreamCheck = errors.New("upstream check failed")

// printConfig writes the effective configuration for --check: every
// setting, its value with secrets masked, and where the value came from.
func printConfig(w io.Writer, c *config) {
	fmt.Fprintln(w, "funnel: the configuration is valid")
	if c.configFile != "" {
		fmt.Fprintf(w, "config file: %s\n", c.configFile)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tVALUE\tSOURCE")
	for _, name := range c.settings() {
		v := shown(name, c.value(name))
		if v == "" {
			v = `""`
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", name, v, c.sources[name])
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "connection budget: at most %d shared (--pool-size) + %d exclusive (--max-exclusive) + 1 pub/sub = %d upstream connections, for the URL's db and one RESP version\n",
		c.poolSize, c.maxExclusive, c.poolSize+c.maxExclusive+1)
}

// shown returns a setting's value for people to read, with secrets masked:
// the upstream URL's password and funnel's own --requirepass.
func shown(name, value string) string {
	switch {
	case value == "":
		return ""
	case name == "requirepass":
		return "xxxxx"
	case name == "upstream":
		u, err := url.Parse(value)
		if err != nil {
			return "(not a URL)"
		}
		return u.Redacted()
	}
	return value
}

// checkUpstream connects to the upstream once and logs in exactly as funnel
// does (TLS, AUTH, SELECT), then sends one PING. It bills the upstream for
// those commands only. Every step is bounded by --dial-timeout.
func checkUpstream(ctx context.Context, w io.Writer, c *config) error {
	up, err := pool.ParseURL(c.upstream, pool.TLSOptions{CAFile: c.tlsCAFile, InsecureSkipVerify: c.tlsSkipVerify})
	if err != nil {
		return fmt.Errorf("%w: %v", errUpstreamCheck, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.dialTimeout)
	defer cancel()
	p := pool.New(up, pool.Options{Size: 1, DialTimeout: c.dialTimeout, Metrics: metrics.New(prometheus.NewRegistry())})
	defer p.Close(ctx)
	start := time.Now()
	done := make(pingResult, 1)
	p.Submit(ctx, p.Pick(), &pool.Request{Raw: resp.AppendCommand(nil, []byte("PING")), Done: done})
	var res pingReply
	select {
	case res = <-done:
	case <-ctx.Done():
		return fmt.Errorf("%w: %s: %v", errUpstreamCheck, up, ctx.Err())
	}
	if res.err != nil {
		return fmt.Errorf("%w: %s: %v", errUpstreamCheck, up, res.err)
	}
	if line := strings.TrimRight(res.reply, "\r\n"); line != "+PONG" {
		return fmt.Errorf("%w: %s: PING answered %.200q", errUpstreamCheck, up, line)
	}
	fmt.Fprintf(w, "upstream %s: connected, logged in and answered PING in %v\n", up, time.Since(start).Round(100*time.Microsecond))
	return nil
}

// pingResult receives the outcome of --check-upstream's PING.
type pingResult chan pingReply

type pingReply struct {
	reply string
	err   error
}

func (c pingResult) Complete(reply []byte, err error) { c <- pingReply{string(reply), err} }

// logConfig logs, at start-up, each setting that is not at its default,
// with its source, so the log shows what this funnel runs with.
func logConfig(log *slog.Logger, c *config) {
	attrs := []any{}
	if c.configFile != "" {
		attrs = append(attrs, "config_file", c.configFile)
	}
	for _, name := range c.settings() {
		if src := c.sources[name]; src.kind != "default" {
			attrs = append(attrs, slog.Group(name, "value", shown(name, c.value(name)), "source", src.String()))
		}
	}
	log.Info("configuration", attrs...)
}
