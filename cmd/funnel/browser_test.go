package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/funneltest"
	"github.com/funnel-proxy/funnel/internal/redistest"
)

// chromium returns the path of the chromium binary (FUNNEL_CHROMIUM, else
// chromium on PATH), failing the test when there is none: make test
// installs it (scripts/deps.sh).
func chromium(t *testing.T) string {
	t.Helper()
	name := os.Getenv("FUNNEL_CHROMIUM")
	if name == "" {
		name = "chromium"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (%v): the savings page is tested in a headless Chromium; run `make deps` (scripts/deps.sh installs Debian's chromium package) or set FUNNEL_CHROMIUM", name, err)
	}
	return path
}

// runChromium runs headless Chromium on url with the extra flags, in a
// profile of its own, and returns its stdout.
func runChromium(t *testing.T, bin, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, stderr.String())
	}
	return stdout.String()
}

// startBullMQ runs bench/bullmq/workload.js against addr for the given
// seconds. It returns a channel that delivers its error if it ends, and a
// kill that ends it at once and waits. bench/bullmq's node_modules are
// installed first if they are missing.
func startBullMQ(t *testing.T, addr string, seconds int) (<-chan error, func()) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found (%v): the savings page is shown under a BullMQ workload; run `make deps`", err)
	}
	dir, err := filepath.Abs("../../bench/bullmq")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "bullmq")); err != nil {
		npm := exec.Command("npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error")
		npm.Dir = dir
		if out, err := npm.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in bench/bullmq: %v\n%s\n(run `make node-deps`)", err, out)
		}
	}
	out := &funneltest.Buffer{}
	cmd := exec.Command(node, "workload.js", "--url", "redis://"+addr, "--seconds", strconv.Itoa(seconds),
		"--mode", "shared", "--tabs", "10", "--workers", "2", "--jobs-per-min", "60", "--recent", "5")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out.String())
		}
		done <- err
		close(exited)
	}()
	kill := func() {
		_ = cmd.Process.Kill() // harmless once it exited
		<-exited
	}
	t.Cleanup(kill)
	return done, kill
}

// domText returns the text of the element with id in a DOM dump, or "".
func domText(dom, id string) string {
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(dom)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(m[1])
}

// TestSavingsPageInBrowser loads the savings page in headless Chromium
// while funnel --preset bullmq carries a BullMQ workload, and checks that
// the page drew its chart and figures from live data: the chart's lines
// have points, the saving ratio and rates are numbers, the bull:* cache
// rule and the top commands are listed. It saves a screenshot, to
// FUNNEL_SCREENSHOT when set (docs/savings.png is made so, relative to the
// repository's root).
func TestSavingsPageInBrowser(t *testing.T) {
	bin := chromium(t)
	start := time.Now()
	rs := redistest.Start(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	addr, _, stop := startRun(t, []string{"--metrics-listen", metricsAddr, "--preset", "bullmq", "--shutdown-timeout", "2s"},
		map[string]string{"REDIS_URL": "redis://" + rs.Addr})
	shot := os.Getenv("FUNNEL_SCREENSHOT")
	seconds := 8
	if shot != "" {
		seconds = 15 // a fuller chart for the README, as in bench/bullmq
		if !filepath.IsAbs(shot) {
			shot = filepath.Join("..", "..", shot)
		}
	} else {
		shot = filepath.Join(t.TempDir(), "savings.png")
	}
	workload, killWorkload := startBullMQ(t, addr, seconds)

	// Wait until the chart has a few seconds of BullMQ traffic.
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for {
		rep := fetchSavings(t, metricsAddr)
		if len(rep.Series.Client) >= seconds/2 && rep.Totals.Upstream > 0 && len(rep.TopCommands) > 3 {
			break
		}
		select {
		case err := <-workload:
			t.Fatalf("the BullMQ workload ended early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no BullMQ traffic on the savings data after %ds: %+v", seconds, rep)
		}
		time.Sleep(250 * time.Millisecond)
	}

	t.Logf("%v: %d s of BullMQ traffic on the chart", time.Since(start).Round(time.Millisecond), seconds/2)
	url := "http://" + metricsAddr + "/"
	dom := runChromium(t, bin, url, "--dump-dom")
	t.Logf("%v: DOM dumped", time.Since(start).Round(time.Millisecond))
	if s := domText(dom, "status"); !strings.HasPrefix(s, "updated") {
		t.Errorf("status %q, want \"updated ...\": the page did not load its data", s)
	}
	for _, line := range []string{"client-line", "upstream-line"} {
		m := regexp.MustCompile(`id="` + line + `"[^>]* d="([^"]*)"`).FindStringSubmatch(dom)
		if m == nil {
			t.Errorf("no path #%s in the page", line)
			continue
		}
		points := regexp.MustCompile(`[ML]-?[0-9.]+ -?[0-9.]+`).FindAllString(m[1], -1)
		if len(points) < 3 {
			t.Errorf("#%s has %d points, want a line of several: d=%q", line, len(points), m[1])
		}
	}
	if r := domText(dom, "ratio"); !regexp.MustCompile(`^-?\d+(\.\d)?%$`).MatchString(r) {
		t.Errorf("saving ratio %q, want a percentage", r)
	}
	for _, id := range []string{"client-rate", "upstream-rate", "direct-day", "funnel-day"} {
		if v := domText(dom, id); !regexp.MustCompile(`^[0-9][0-9,.]*( [kMG])?$`).MatchString(v) {
			t.Errorf("#%s %q, want a number", id, v)
		}
	}
	if v := domText(dom, "saved-month"); !strings.HasPrefix(v, "$") {
		t.Errorf("saved per month %q, want dollars", v)
	}
	if !regexp.MustCompile(`<td>bull:\*</td><td>[0-9]`).MatchString(dom) {
		t.Errorf("the bull:* cache rule is not listed with its counts")
	}
	if !regexp.MustCompile(`<td>(evalsha|eval|bzpopmin|hget|hgetall|xread)</td><td>[0-9]`).MatchString(dom) {
		t.Errorf("no BullMQ command among the top commands")
	}
	if !strings.Contains(dom, "<td>upstream shared</td>") {
		t.Errorf("connections per lane are not shown")
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	runChromium(t, bin, url, "--screenshot="+shot, "--window-size=1280,1000")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	cfg, err := png.DecodeConfig(f)
	f.Close()
	if err != nil || cfg.Width != 1280 || cfg.Height != 1000 {
		t.Errorf("screenshot %s: %dx%d %v, want a 1280x1000 PNG", shot, cfg.Width, cfg.Height, err)
	}
	t.Logf("%v: screenshot %s", time.Since(start).Round(time.Millisecond), shot)
	// The workload is not waited for: its end (workers closing) takes
	// seconds and checks BullMQ, which compat/ does.
	select {
	case err := <-workload:
		if err != nil {
			t.Errorf("BullMQ workload: %v", err)
		}
	default:
	}
	killWorkload()
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
