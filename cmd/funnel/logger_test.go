package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
)

// TestJSONDurations: JSON logs write durations as "1.5s", also inside
// groups; text logs keep doing so.
func TestJSONDurations(t *testing.T) {
	var out bytes.Buffer
	level := new(slog.LevelVar)
	log, err := newLogger(&out, level, "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("x", "wait", 1500*time.Millisecond, slog.Group("g", "d", time.Minute), "n", 3)
	if got := out.String(); !strings.Contains(got, `"wait":"1.5s","g":{"d":"1m0s"},"n":3`) {
		t.Errorf("json: %s", got)
	}
	out.Reset()
	level.Set(slog.LevelWarn) // the level is live
	log.Info("hidden")
	if out.Len() != 0 {
		t.Errorf("INFO written at level warn: %s", out.String())
	}
	if _, err := newLogger(&out, level, "xml"); err == nil {
		t.Error("log format xml accepted")
	}

	// The logger run builds is that one.
	rs := redistest.Start(t)
	_, logs, stop := startRun(t, []string{"--log-format", "json", "--metrics-listen", "", "--shutdown-timeout", "1500ms"},
		map[string]string{"REDIS_URL": "redis://" + rs.Addr})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), `"msg":"shutting down","timeout":"1.5s"`) {
		t.Errorf("run's JSON log:\n%s", logs.String())
	}
}
