package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/savings"
	"github.com/redis/go-redis/v9"
)

// httpGet fetches a URL of the metrics listener and returns the body and
// its Content-Type.
func httpGet(t *testing.T, url string) (string, string) {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	res, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v: %s", url, res.StatusCode, err, body)
	}
	return string(body), res.Header.Get("Content-Type")
}

// fetchSavings returns the savings data of the funnel at metricsAddr.
func fetchSavings(t *testing.T, metricsAddr string) savings.Report {
	t.Helper()
	body, ctype := httpGet(t, "http://"+metricsAddr+savings.DataPath)
	if ctype != "application/json" {
		t.Errorf("%s Content-Type %q", savings.DataPath, ctype)
	}
	var rep savings.Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatalf("%s: %v\n%s", savings.DataPath, err, body)
	}
	return rep
}

// metricSum adds up every series of a metric in a /metrics text, whose
// labels contain all of match.
func metricSum(text, name string, match ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// TestSavingsData drives funnel with known traffic and checks what
// /api/savings reports: the client and upstream totals agree with
// /metrics, SET leads the upstream bill, the cached GETs show as hits of
// their rule, and the estimate is the rates times a day at the price given.
func TestSavingsData(t *testing.T) {
	rs := redistest.Start(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	addr, _, stop := startRun(t, []string{"--metrics-listen", metricsAddr, "--cache", "c:*=1m", "--cache", "other:*=5s", "--price-per-100k", "0.5"},
		map[string]string{"REDIS_URL": "redis://" + rs.Addr})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, MaxRetries: -1, ReadTimeout: 5 * time.Second})
	defer rdb.Close()

	const sets, gets = 30, 20
	for i := range sets {
		if err := rdb.Set(ctx, fmt.Sprint("s:", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.Set(ctx, "c:1", "cached", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for range gets {
		if v, err := rdb.Get(ctx, "c:1").Result(); err != nil || v != "cached" {
			t.Fatalf("GET c:1: %q %v", v, err)
		}
	}
	for range 5 {
		rdb.Ping(ctx) // answered by funnel itself
	}

	rep := fetchSavings(t, metricsAddr)
	text, _ := httpGet(t, "http://"+metricsAddr+"/metrics")
	if want := int64(metricSum(text, "funnel_client_commands_total")); rep.Totals.Client != want || want < sets+1+gets+5 {
		t.Errorf("client commands %d, /metrics says %d, want at least %d", rep.Totals.Client, want, sets+1+gets+5)
	}
	if want := int64(metricSum(text, "funnel_upstream_commands_total")); rep.Totals.Upstream != want {
		t.Errorf("upstream commands %d, /metrics says %d", rep.Totals.Upstream, want)
	}
	// The 20 GETs cost one upstream GET; the PINGs none.
	if rep.Totals.Upstream >= rep.Totals.Client-gets+1 {
		t.Errorf("upstream %d of client %d commands: the cache and PINGs saved nothing?", rep.Totals.Upstream, rep.Totals.Client)
	}
	cmds := map[string]savings.CommandCost{}
	for _, c := range rep.TopCommands {
		cmds[c.Command] = c
	}
	if len(rep.TopCommands) == 0 || rep.TopCommands[0].Command != "set" || rep.TopCommands[0].Upstream != sets+1 || rep.TopCommands[0].Client != sets+1 {
		t.Errorf("top commands %+v, want set first with %d upstream", rep.TopCommands, sets+1)
	}
	if g := cmds["get"]; g.Upstream != 1 || g.Client != gets {
		t.Errorf("get: %+v, want %d from clients and 1 upstream", g, gets)
	}
	if _, ok := cmds["ping"]; ok {
		t.Errorf("ping is among the commands sent upstream: %+v", rep.TopCommands)
	}
	rules := map[string]savings.CacheRule{}
	for _, r := range rep.CacheRules {
		rules[r.Rule] = r
	}
	if r := rules["c:*"]; r.Hits != gets-1 || r.Misses != 1 || r.HitRate == nil || *r.HitRate != float64(gets-1)/gets {
		t.Errorf("rule c:*: %+v, want %d hits and 1 miss", r, gets-1)
	}
	if hits := metricSum(text, "funnel_cache_rule_reads_total", `rule="c:*"`, `result="hit"`); hits != gets-1 {
		t.Errorf("funnel_cache_rule_reads_total{rule=\"c:*\",result=\"hit\"} %v, want %d", hits, gets-1)
	}
	if r := rules["other:*"]; r.Hits+r.Misses+r.Joined != 0 {
		t.Errorf("rule other:* matched nothing but shows %+v", r)
	}
	if rep.SavingRatio == nil || *rep.SavingRatio <= 0 || *rep.SavingRatio >= 1 {
		t.Errorf("saving ratio %v", rep.SavingRatio)
	}
	if rep.Connections.Clients != 1 || rep.Connections.Lanes["shared"] < 1 {
		t.Errorf("connections %+v, want 1 client and a shared upstream connection", rep.Connections)
	}
	if rep.Totals.ClientReadBytes == 0 || rep.Totals.ClientWriteBytes == 0 || rep.Totals.UpstreamReadBytes == 0 || rep.Totals.UpstreamWrBytes == 0 {
		t.Errorf("bytes: %+v", rep.Totals)
	}
	e := rep.Estimate
	if e.PricePer100k != 0.5 || e.DirectPerDay != rep.Window.ClientPerSecond*86400 || e.FunnelPerDay != rep.Window.UpstreamPerSecond*86400 ||
		e.DirectPerMonth != e.DirectPerDay*savings.DaysPerMonth || e.FunnelCostPerMonth != e.FunnelPerMonth/100_000*0.5 {
		t.Errorf("estimate %+v for window %+v", e, rep.Window)
	}
	if e.DirectPerDay <= e.FunnelPerDay || e.SavedCostPerMonth <= 0 {
		t.Errorf("estimate saves nothing: %+v", e)
	}

	// The sampler fills the chart's series once a second.
	deadline := time.Now().Add(5 * time.Second)
	for len(rep.Series.Client) < 2 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		rep = fetchSavings(t, metricsAddr)
	}
	if len(rep.Series.Client) < 2 || len(rep.Series.Client) != len(rep.Series.Upstream) {
		t.Errorf("series %+v, want two or more points each", rep.Series)
	}

	page, ctype := httpGet(t, "http://"+metricsAddr+"/")
	if !strings.HasPrefix(ctype, "text/html") || !strings.Contains(page, savings.DataPath[1:]) || strings.Contains(page, "http://") && strings.Contains(page, "<script src") {
		t.Errorf("/: Content-Type %q, page does not poll %s or loads a script from elsewhere", ctype, savings.DataPath)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// TestPricePer100k: --price-per-100k is read from its flag or
// FUNNEL_PRICE_PER_100K, defaults to Upstash's 0.20, and must be a number
// of 0 or more.
func TestPricePer100k(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		env     string
		want    float64
		problem string
	}{
		{want: 0.20},
		{env: "0.4", want: 0.4},
		{args: []string{"--price-per-100k", "1.5"}, env: "0.4", want: 1.5},
		{args: []string{"--price-per-100k", "0"}, want: 0},
		{env: "cheap", problem: `FUNNEL_PRICE_PER_100K: "cheap" is not a number (for example 0.2)`},
		{args: []string{"--price-per-100k", "-1"}, problem: "--price-per-100k: must be a price of 0 or more, in dollars, not -1"},
		{args: []string{"--price-per-100k", "NaN"}, problem: "--price-per-100k: must be a price of 0 or more, in dollars, not NaN"},
	} {
		env := map[string]string{"REDIS_URL": "redis://127.0.0.1:6379", "FUNNEL_PRICE_PER_100K": tc.env}
		cfg, err := parseConfig(tc.args, io.Discard, func(k string) string { return env[k] })
		if tc.problem != "" {
			if err == nil || err.Error() != tc.problem {
				t.Errorf("%v %q: %v, want %q", tc.args, tc.env, err, tc.problem)
			}
			continue
		}
		if err != nil || cfg.pricePer100k != tc.want {
			t.Errorf("%v %q: %v %v, want %v", tc.args, tc.env, cfg, err, tc.want)
		}
	}
}
