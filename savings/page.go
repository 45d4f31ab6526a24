package savings

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"time"

	"github.com/funnel-proxy/funnel/metrics"
)

// DataPath is where the page's JSON is served.
const DataPath = "/api/savings"

//go:embed page.html
var pageHTML []byte

// Options configure a Page.
type Options struct {
	// PricePer100k is what the upstream bills per 100,000 commands, in
	// dollars (--price-per-100k).
	PricePer100k float64
	// Interval is how often the rates are sampled (default 1s), and Keep
	// how many samples the chart shows (default 300: five minutes).
	Interval time.Duration
	Keep     int
}

// Page is the savings page: its handlers and the sampler behind them.
type Page struct {
	m       *metrics.Metrics
	opts    Options
	started time.Time
	sampler *sampler
}

// New returns the page for m and starts sampling; Close stops it.
func New(m *metrics.Metrics, opts Options) *Page {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Keep < 2 {
		opts.Keep = 300
	}
	p := &Page{m: m, opts: opts, started: time.Now(), sampler: newSampler(m, opts.Interval, opts.Keep)}
	go p.sampler.run()
	return p
}

// Close stops the sampling goroutine and waits for it to end. It is
// idempotent.
func (p *Page) Close() { p.sampler.close() }

// Register adds the page at / and its data at DataPath to mux.
func (p *Page) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", p.servePage)
	mux.HandleFunc("GET "+DataPath, p.serveData)
}

// Report returns what DataPath serves now.
func (p *Page) Report() Report {
	return buildReport(time.Now(), p.started, p.sampler.samples(), p.m.Snapshot(), p.opts.PricePer100k, p.opts.Interval)
}

func (p *Page) servePage(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// Everything is in the page: it loads nothing from anywhere and may
	// only fetch its own data.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
	_, _ = w.Write(pageHTML)
}

func (p *Page) serveData(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	_ = enc.Encode(p.Report())
}
