package main

import (
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/funnel-proxy/funnel/proxy"
)

// reloader applies a proxy.Reloadable to a running server. Reload applies
// all of r or, when it returns an error, none of it. It must not close,
// stall or reorder any client's connection: sessions in flight finish
// under the old settings or the new, never half of each. It is called from
// one goroutine at a time, and the caller does not modify r's slices
// afterwards. *proxy.Server is one.
type reloader interface {
	Reload(proxy.Reloadable) error
}

// reloadable returns c's settings that a reload may change. The preset is
// named, not applied: the proxy applies it, at start and on each reload.
func (c *config) reloadable() proxy.Reloadable {
	scripts := make([]string, 0, len(c.cacheScripts))
	for _, s := range c.cacheScripts {
		scripts = append(scripts, strings.ToLower(strings.TrimSpace(s)))
	}
	return proxy.Reloadable{
		CacheRules: c.cacheRules, AbsorbRules: c.absorbRules, ShareWaits: c.shareWaits,
		CacheScripts: scripts, Preset: c.preset, Deny: c.deny,
		ClientOutputLimit: c.clientOutputLimit, ClientWriteTimeout: c.clientWriteTimeout,
	}
}

// proxySettings are the settings a reload hands to the reloader
// (proxy.Server.Reload); log-level is applied by cmd/funnel itself, and
// every other setting needs a restart.
var proxySettings = map[string]bool{
	"cache": true, "absorb": true, "share-waits": true, "preset": true, "cache-script": true,
	"deny": true, "client-output-limit": true, "client-write-timeout": true,
}

// reloadState is what a reload compares a re-read configuration against,
// and where it applies the changes.
type reloadState struct {
	args   []string // the command line funnel started with
	getenv func(string) string
	level  *slog.LevelVar // the level of every logger funnel made
	target reloader
	log    *slog.Logger
	// effective, when set, returns the proxy's settings in force, rules of
	// the preset included, logged after a reload applied them.
	effective func() proxy.Reloadable
	// applied holds each setting's value in effect. A setting that needs a
	// restart keeps the value it started with, so every reload that still
	// finds it changed says so again.
	applied map[string]string
}

func newReloadState(started *config, args []string, getenv func(string) string, level *slog.LevelVar, target reloader, log *slog.Logger) *reloadState {
	s := &reloadState{args: args, getenv: getenv, level: level, target: target, log: log, applied: map[string]string{}}
	for _, name := range started.settings() {
		s.applied[name] = started.value(name)
	}
	return s
}

// change is one setting whose value differs from the one in effect.
type change struct {
	setting, old, new string
}

func (ch change) attrs() []any {
	old, now := shown(ch.setting, ch.old), shown(ch.setting, ch.new)
	if old == now {
		old, now = "(secret)", "(secret, changed)"
	}
	return []any{"setting", ch.setting, "old", old, "new", now}
}

// reload re-reads the configuration (the file, the environment and the
// original flags), and if it is valid applies what may change live and
// logs what needs a restart. A configuration with any problem changes
// nothing: each problem is logged and the running configuration is kept.
func (s *reloadState) reload() {
	next, err := parseConfig(s.args, io.Discard, s.getenv)
	if err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			for _, p := range ce.problems {
				s.log.Error("reload rejected: " + p)
			}
		} else {
			s.log.Error("reload rejected", "err", err)
		}
		s.log.Error("reload rejected; the running configuration is kept: fix the configuration and send SIGHUP again")
		return
	}
	var level, live, restart []change
	for _, name := range next.settings() {
		if now := next.value(name); now != s.applied[name] {
			ch := change{setting: name, old: s.applied[name], new: now}
			switch {
			case name == "log-level":
				level = append(level, ch)
			case proxySettings[name]:
				live = append(live, ch)
			default:
				restart = append(restart, ch)
			}
		}
	}
	applied := 0
	for _, ch := range level {
		lv, _ := parseLevel(ch.new) // validated
		s.level.Set(lv)
		s.applied[ch.setting] = ch.new
		applied++
		s.log.Info("reload: applied", ch.attrs()...)
	}
	if len(live) > 0 {
		if err := s.target.Reload(next.reloadable()); err != nil {
			for _, ch := range live {
				s.log.Warn("reload: not applied; restart funnel to apply it", append(ch.attrs(), "err", err)...)
			}
			restart = append(restart, live...)
		} else {
			for _, ch := range live {
				s.applied[ch.setting] = ch.new
				applied++
				s.log.Info("reload: applied", ch.attrs()...)
			}
			if s.effective != nil {
				s.log.Info("reload: proxy rules in effect", "proxy", s.effective())
			}
		}
	}
	for _, ch := range restart {
		if !proxySettings[ch.setting] {
			s.log.Warn("reload: this setting needs a restart; restart funnel to apply it", ch.attrs()...)
		}
	}
	if applied == 0 && len(restart) == 0 {
		s.log.Info("reload: configuration unchanged")
		return
	}
	s.log.Info("reload done", "applied", applied, "needs_restart", len(restart))
	s.log.Debug("reload: settings in effect", s.settingsInEffect()...)
}

// settingsInEffect returns every setting in effect as log attributes,
// secrets masked.
func (s *reloadState) settingsInEffect() []any {
	var attrs []any
	for _, name := range slices.Sorted(maps.Keys(s.applied)) {
		attrs = append(attrs, name, shown(name, s.applied[name]))
	}
	return attrs
}
