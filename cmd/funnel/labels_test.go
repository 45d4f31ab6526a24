package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/internal/buildinfo"
	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/resp"
)

// fixedLabels are the values each label of a funnel_ metric may take,
// other than command (the command table's names), rule (the configured
// patterns) and the build info's.
var fixedLabels = map[string][]string{
	"lane":   {"shared", "exclusive", "pubsub", "admin"},
	"state":  {"in_use", "idle"},
	"result": {"ok", "error", "hit", "joined", "miss"},
	"route":  {"upstream", "local", "fetched", "transaction", "exclusive", "pubsub", "admin", "refused", "cache", "joined"},
	"kind": {"channel", "pattern", "shard", "client_protocol", "cross_protocol", "refused", "auth_failed",
		"upstream_unavailable", "upstream_lost", "upstream_timeout", "upstream_protocol", "upstream_closed"},
	"reason": {"client_closed", "quit", "protocol_error", "cross_protocol", "output_limit", "pubsub_output_limit",
		"pubsub_unconfirmed", "write_timeout", "write_error", "max_clients", "shutdown", "panic", "memory_limit"},
}

// randomWord is a lower-case word nobody would name a command.
func randomWord(r *rand.Rand) string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789_-:."
	b := []byte("zq")
	for range 4 + r.IntN(10) {
		b = append(b, letters[r.IntN(len(letters))])
	}
	return string(b)
}

// hostileBurst is n random unknown commands, unknown subcommands of
// commands that have subcommands, and known commands with random keys.
func hostileBurst(r *rand.Rand, n int) (burst []byte, count int) {
	for range n {
		w := randomWord(r)
		for _, args := range [][]string{
			{w, "x"},
			{strings.ToUpper(w)},
			{"CONFIG", w},
			{"CLIENT", w, "x"},
			{"OBJECT", w, "c:" + w},
			{"XINFO", w},
			{"GET", "c:" + w},
			{"SET", w, w},
			{"PING"},
		} {
			bs := make([][]byte, len(args))
			for i, a := range args {
				bs[i] = []byte(a)
			}
			burst = resp.AppendCommand(burst, bs...)
			count++
		}
	}
	return burst, count
}

// TestMetricLabelsFromTableOnly sends funnel hundreds of random command
// names and subcommands, before AUTH and after, and checks every label of
// every funnel_ series on /metrics: commands are names from the command
// table (or unknown, unauthenticated), rules the configured patterns, and
// every other label one of a fixed set. No value the client made up
// appears, and the number of series stays bounded.
func TestMetricLabelsFromTableOnly(t *testing.T) {
	rs := redistest.Start(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	addr, _, stop := startRun(t, []string{"--metrics-listen", metricsAddr, "--requirepass", "secret", "--cache", "c:*=1m"},
		map[string]string{"REDIS_URL": "redis://" + rs.Addr})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	rd := bufio.NewReader(nc)
	var scan resp.ReplyScanner
	read := func(n int) []string {
		var replies []string
		buf := []byte{}
		for len(replies) < n {
			if m, err := scan.Scan(buf); err != nil {
				t.Fatalf("reply %d: %v", len(replies), err)
			} else if m > 0 {
				replies = append(replies, string(buf[:m]))
				buf = buf[m:]
				continue
			}
			chunk := make([]byte, 64<<10)
			k, err := rd.Read(chunk)
			if err != nil {
				t.Fatalf("after %d of %d replies: %v", len(replies), n, err)
			}
			buf = append(buf, chunk[:k]...)
		}
		return replies
	}
	r := rand.New(rand.NewPCG(1, 2))
	series := func() (int, string) {
		text, _ := httpGet(t, "http://"+metricsAddr+"/metrics")
		n := 0
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(line, "funnel_") {
				n++
			}
		}
		return n, text
	}

	// Before AUTH: every command but the handshake's is refused (unknown
	// ones as unknown, as Redis does), and none may pick a label.
	burst, n := hostileBurst(r, 50)
	if _, err := nc.Write(burst); err != nil {
		t.Fatal(err)
	}
	for i, rep := range read(n) {
		if !strings.HasPrefix(rep, "-NOAUTH") && !strings.HasPrefix(rep, "-ERR unknown ") {
			t.Fatalf("reply %d before AUTH: %q, want NOAUTH or unknown (sub)command", i, rep)
		}
	}
	if _, err := nc.Write(resp.AppendCommand(nil, []byte("AUTH"), []byte("secret"))); err != nil {
		t.Fatal(err)
	}
	if rep := read(1)[0]; rep != "+OK\r\n" {
		t.Fatalf("AUTH: %q", rep)
	}
	// A first burst makes the series of whatever the commands fold into.
	burst, n = hostileBurst(r, 20)
	nc.Write(burst)
	read(n)
	before, _ := series()
	burst, n = hostileBurst(r, 300)
	if _, err := nc.Write(burst); err != nil {
		t.Fatal(err)
	}
	read(n)
	after, text := series()
	t.Logf("funnel_ series: %d before %d random commands, %d after", before, n, after)
	if after-before > 10 {
		t.Errorf("%d random commands made %d new funnel_ series, want a handful at most (histogram buckets of a command first seen)", n, after-before)
	}

	label := regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)
	checked := 0
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "funnel_") {
			continue
		}
		name := line[:strings.IndexAny(line, "{ ")]
		for _, m := range label.FindAllStringSubmatch(line, -1) {
			k, v := m[1], m[2]
			checked++
			ok := false
			switch k {
			case "command":
				ok = v == "unknown" || v == "unauthenticated" || command.Known(v)
			case "rule":
				ok = v == "c:*"
			case "version":
				ok = v == buildinfo.Version
			case "commit":
				ok = v == buildinfo.Commit
			case "goversion":
				ok = v == buildinfo.GoVersion()
			case "le":
				_, err := strconv.ParseFloat(v, 64)
				ok = err == nil || v == "+Inf"
			default:
				for _, f := range fixedLabels[k] {
					ok = ok || v == f
				}
			}
			if !ok || strings.Contains(v, "zq") {
				t.Errorf("%s: label %s=%q is not from the command table or a fixed set", name, k, v)
			}
		}
	}
	// The new metrics have counted this traffic.
	for _, want := range []struct{ name, match string }{
		{"funnel_upstream_duration_seconds_count", `command="set"`},
		{"funnel_cache_rule_reads_total", `result="miss",rule="c:*"`},
		{"funnel_build_info", `version="` + buildinfo.Version + `"`},
		{"funnel_client_read_bytes_total", ""},
		{"funnel_client_written_bytes_total", ""},
		{"funnel_upstream_read_bytes_total", ""},
		{"funnel_upstream_written_bytes_total", ""},
	} {
		if v := metricSum(text, want.name, want.match); v <= 0 {
			t.Errorf("/metrics: %s{%s} is %v, want more than 0", want.name, want.match, v)
		}
	}
	if !strings.Contains(text, "funnel_exclusive_wait_seconds_bucket{") {
		t.Errorf("/metrics has no funnel_exclusive_wait_seconds")
	}
	if strings.Contains(text, `funnel_upstream_duration_seconds_count{command="ping"}`) {
		t.Errorf("/metrics has an upstream duration for PING, which never goes upstream")
	}
	t.Logf("checked %d label values", checked)
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
