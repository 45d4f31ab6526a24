package deploy

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// dashboardPanel is the part of a Grafana panel the test reads.
type dashboardPanel struct {
	Type       string
	Title      string
	Datasource *struct{ Type, UID string }
	Targets    []struct{ Expr string }
	Panels     []dashboardPanel // a collapsed row's panels
}

// promQLWords are PromQL's keywords, aggregations and functions: the
// identifiers in an expression that are not metric names.
var promQLWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "topk": true, "bottomk": true, "quantile": true,
	"rate": true, "irate": true, "increase": true, "delta": true, "deriv": true, "histogram_quantile": true,
	"clamp_min": true, "clamp_max": true, "abs": true, "vector": true, "scalar": true, "label_values": true,
}

// metricNames returns the metric names a PromQL expression selects. It
// drops what is not one: quoted strings, label matchers in {...}, ranges
// in [...], the label lists of by/without/on/ignoring (...), numbers, and
// keywords and functions.
func metricNames(expr string) []string {
	expr = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).ReplaceAllString(expr, `""`)
	expr = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(expr, " ")
	expr = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(expr, " ")
	expr = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`).ReplaceAllString(expr, " ")
	var names []string
	for _, m := range regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`).FindAllStringIndex(expr, -1) {
		word := expr[m[0]:m[1]]
		if promQLWords[word] || (m[0] > 0 && (expr[m[0]-1] >= '0' && expr[m[0]-1] <= '9' || expr[m[0]-1] == '.')) {
			continue // a keyword or function, or an exponent like 1e3
		}
		if !slices.Contains(names, word) {
			names = append(names, word)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.99, sum by (le, route) (rate(funnel_request_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))`: {"funnel_request_duration_seconds_bucket"},
		`1 - sum(rate(a_total{x="by (y)"}[5m])) / sum(rate(b_total[1h])) * 86400`:                                                              {"a_total", "b_total"},
		`topk(10, sum without (instance) (c)) and on (job) d`:                                                                                  {"c", "d"},
		`label_values(funnel_client_connections, instance)`:                                                                                    {"funnel_client_connections", "instance"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", expr, got, want)
		}
	}
}

// TestGrafanaDashboard checks deploy/grafana/funnel-dashboard.json: it has
// the panels operators need, every query uses the dashboard's Prometheus,
// and every metric it queries is one a running funnel exposes on /metrics
// after some traffic.
func TestGrafanaDashboard(t *testing.T) {
	var dash struct {
		Title      string
		UID        string
		Panels     []dashboardPanel
		Templating struct {
			List []struct {
				Name, Type string
				Query      json.RawMessage
			}
		}
	}
	if err := json.Unmarshal([]byte(readFile(t, "grafana/funnel-dashboard.json")), &dash); err != nil {
		t.Fatal(err)
	}
	var panels []dashboardPanel
	for _, p := range dash.Panels {
		panels = append(panels, p)
		panels = append(panels, p.Panels...)
	}
	used := map[string][]string{} // metric -> panel titles
	var exprs []string
	for _, p := range panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %+v, %d queries", p.Title, p.Datasource, len(p.Targets))
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q: %s ignores the instance variable", p.Title, tg.Expr)
			}
			for _, m := range metricNames(tg.Expr) {
				used[m] = append(used[m], p.Title)
			}
		}
	}
	for _, v := range dash.Templating.List {
		if v.Type == "query" {
			var q struct{ Query string }
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Fatalf("variable %s: %v", v.Name, err)
			}
			if m := regexp.MustCompile(`^label_values\((\w+),\s*(\w+)\)$`).FindStringSubmatch(q.Query); m != nil {
				used[m[1]] = append(used[m[1]], "variable "+v.Name)
			} else {
				t.Errorf("variable %s: query %q", v.Name, q.Query)
			}
		}
	}
	// What the dashboard must show.
	all := strings.Join(exprs, "\n")
	for what, re := range map[string]string{
		"client vs upstream commands/s": `sum\(rate\(funnel_client_commands_total.*\n(.*\n)*.*sum\(rate\(funnel_upstream_commands_total`,
		"the saving ratio":              `1 - sum\(rate\(funnel_upstream_commands_total[^\n]*\)\) / sum\(rate\(funnel_client_commands_total`,
		"cache hits and misses":         `funnel_cache_hits_total(.*\n)*.*funnel_cache_misses_total`,
		"connections per lane":          `sum by \(lane\) \(funnel_upstream_connections`,
		"errors by kind":                `sum by \(kind\) \(rate\(funnel_errors_total`,
		"latency by route":              `histogram_quantile\(0\.99, sum by \(le, route\) \(rate\(funnel_request_duration_seconds_bucket`,
		"in-flight":                     `funnel_inflight_requests`,
		"upstream latency by command":   `histogram_quantile\(0\.99, sum by \(le, command\) \(rate\(funnel_upstream_duration_seconds_bucket`,
		"cache hit ratio per rule":      `sum by \(rule\) \(rate\(funnel_cache_rule_reads_total`,
		"bytes in and out":              `funnel_client_read_bytes_total(.*\n)*.*funnel_upstream_read_bytes_total`,
		"the version running":           `funnel_build_info`,
	} {
		if !regexp.MustCompile(re).MatchString(all) {
			t.Errorf("the dashboard does not show %s", what)
		}
	}

	// A funnel with traffic of every kind the panels count.
	rs := redistest.Start(t)
	addr, metricsAddr := startFunnel(t, rs, nil, "--cache", "k*=10s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 5 * time.Second})
	defer rdb.Close()
	rdb.Set(ctx, "k", "v", 0)
	for range 3 {
		rdb.Get(ctx, "k") // a miss, then hits
	}
	rdb.Ping(ctx)                    // answered locally
	rdb.Do(ctx, "MONITOR")           // refused: an error of kind "refused"
	rdb.Do(ctx, "BLPOP", "q", "0.1") // the exclusive lane
	other := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	other.Ping(ctx)
	other.Close() // a closed client connection
	exposed := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, line := range strings.Split(scrape(t, metricsAddr), "\n") {
			if line != "" && line[0] != '#' {
				exposed[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
			}
		}
		if exposed["funnel_client_connections_closed_total"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	names := make([]string, 0, len(used))
	for m := range used {
		names = append(names, m)
	}
	slices.Sort(names)
	for _, m := range names {
		if !exposed[m] {
			t.Errorf("%s (in %q) is not in funnel's /metrics", m, used[m])
		}
	}
	t.Logf("the dashboard queries %d metrics: %s", len(names), strings.Join(names, " "))
}
