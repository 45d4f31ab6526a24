package main

import (
	"fmt"
	"io"
	"log/slog"
)

// newLogger returns funnel's logger, writing text or JSON to w at the
// level level holds. The level is a LevelVar so that SIGHUP can change it
// for every part of funnel at once, without a new logger.
func newLogger(w io.Writer, level *slog.LevelVar, format string) (*slog.Logger, error) {
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: humanDurations})), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}

// humanDurations writes durations as Go prints them ("1.5s"), not as the
// JSON handler's integer nanoseconds, which nobody reads at a glance. (The
// text handler already does this.)
func humanDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// parseLevel reads a --log-level value: debug, info, warn or error (and
// slog's offsets such as "info+2").
func parseLevel(s string) (slog.Level, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level: %w", err)
	}
	return lv, nil
}
