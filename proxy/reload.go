package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"
)

// Reloadable is what Server.Reload may change in a running funnel without
// dropping a connection (cmd/funnel hands it over on SIGHUP). Every other
// Option needs a new Server.
type Reloadable struct {
	CacheRules   []CacheRule  // Options.CacheRules
	AbsorbRules  []AbsorbRule // Options.AbsorbRules
	ShareWaits   []string     // Options.ShareWaits
	CacheScripts []string     // Options.CacheScripts: SHA1s of read-only scripts
	// Preset names a preset in Presets whose rules add to the ones above
	// (Options.Preset); empty: none.
	Preset             string
	Deny               []string      // Options.Deny, as given ("flushall", "config set")
	ClientOutputLimit  int64         // Options.ClientOutputLimit; 0: the default
	ClientWriteTimeout time.Duration // Options.ClientWriteTimeout; 0: the default
}

// ErrUnknownPreset is returned by Reload for a preset Presets does not
// name.
var ErrUnknownPreset = errors.New("proxy: unknown preset")

// ErrReloadNeedsCache is returned by Reload for cache or absorb rules given
// to a Server made without a cache (coalescing off and no such rules): the
// cache must see every write from the start to keep a client's reads after
// its writes, so it cannot be made later.
var ErrReloadNeedsCache = errors.New("proxy: cache and absorb rules cannot be turned on live when funnel started without a cache (coalescing off and no cache or absorb rule): restart funnel")

// settings are the Server's reloadable settings, resolved (preset applied,
// defaults set, lists made into sets). One value is never modified: Reload
// stores a new one, and each command reads the pointer once (Server.live),
// so it runs under the old settings or the new, never half of each.
type settings struct {
	cacheRules   []CacheRule
	absorbRules  []AbsorbRule
	shareWaits   []string
	scripts      map[string]bool // lower-case SHA1s the operator named
	scriptList   []string        // the same, sorted, for INFO
	preset       string
	deny         map[string]bool // "flushall", "config|set"
	denyList     []string        // the same, sorted, for INFO
	outputLimit  int64
	writeTimeout time.Duration
	// cacheGen changes with each reload that changed what the cache holds
	// (cache rules, absorb rules, scripts): a read that took its TTL from
	// settings of another generation must not fill the cache (tryCache).
	cacheGen uint64
}

// newSettings resolves r.
func newSettings(r Reloadable) (*settings, error) {
	opts := Options{
		CacheRules:   slices.Clone(r.CacheRules),
		AbsorbRules:  slices.Clone(r.AbsorbRules),
		ShareWaits:   slices.Clone(r.ShareWaits),
		CacheScripts: slices.Clone(r.CacheScripts),
	}
	if r.Preset != "" {
		p, ok := Presets[r.Preset]
		if !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknownPreset, r.Preset)
		}
		p.Apply(&opts)
	}
	st := &settings{
		cacheRules: opts.CacheRules, absorbRules: opts.AbsorbRules, shareWaits: opts.ShareWaits,
		scripts: map[string]bool{}, preset: r.Preset, deny: map[string]bool{},
		outputLimit: r.ClientOutputLimit, writeTimeout: r.ClientWriteTimeout,
	}
	for _, sha := range opts.CacheScripts {
		st.scripts[strings.ToLower(strings.TrimSpace(sha))] = true
	}
	st.scriptList = slices.Sorted(maps.Keys(st.scripts))
	for _, d := range r.Deny {
		st.deny[strings.ToLower(strings.ReplaceAll(strings.TrimSpace(d), " ", "|"))] = true
	}
	st.denyList = slices.Sorted(maps.Keys(st.deny))
	if st.outputLimit <= 0 {
		st.outputLimit = defaultClientOutputLimit
	}
	if st.writeTimeout <= 0 {
		st.writeTimeout = defaultClientWriteTimeout
	}
	return st, nil
}

// sameCache reports whether st and o would fill and answer the cache (and
// absorb writes) alike.
func (st *settings) sameCache(o *settings) bool {
	return slices.Equal(st.cacheRules, o.cacheRules) && slices.Equal(st.absorbRules, o.absorbRules) &&
		slices.Equal(st.scriptList, o.scriptList)
}

// live returns the settings in force: read once per decision, never kept
// across commands.
func (srv *Server) live() *settings { return srv.settings.Load() }

// Reload swaps the server's reloadable settings for r's, all at once, or
// returns an error and changes nothing. Commands read after it returns run
// under the new settings; commands already read finish under the settings
// they started with. No connection is closed, stalled or reordered: the
// swap is one atomic store, and what it drops is cache entries.
//
// When the cache rules, absorb rules or read-only scripts change, the whole
// cache is dropped (cache.Reset), with what absorbing had learnt and any
// fill in flight: simpler than finding the entries of the rules that
// changed, and a reload is rare, so the cost is one round of misses. So no
// reply stored under an old TTL outlives the new rules, and nothing is
// absorbed on knowledge learnt under an old window. Shared waits already
// running keep going under the globs they started with until their last
// waiter leaves; new blocking commands follow the new globs.
//
// Reload may be called from any goroutine; calls are serialised. The caller
// must not modify r's slices afterwards.
func (srv *Server) Reload(r Reloadable) error {
	next, err := newSettings(r)
	if err != nil {
		return err
	}
	srv.reloadMu.Lock()
	defer srv.reloadMu.Unlock()
	old := srv.live()
	if srv.cache == nil && (len(next.cacheRules) > 0 || len(next.absorbRules) > 0) {
		return ErrReloadNeedsCache
	}
	next.cacheGen = old.cacheGen
	same := next.sameCache(old)
	if !same {
		next.cacheGen++
	}
	// Store first, then Reset: a read that took its TTL from the old
	// settings either led its flight before the Reset (which keeps it from
	// filling) or sees the new generation after its lookup and resets again.
	srv.settings.Store(next)
	if !same && srv.cache != nil {
		srv.cache.Reset()
	}
	srv.log.Info("proxy settings reloaded", "cache_dropped", !same && srv.cache != nil)
	return nil
}

// Settings returns the reloadable settings in force, resolved: the
// preset's rules are among the rules (Preset still names it), scripts are
// lower case and deny entries as "config|set", both sorted, and defaults
// are filled in. For logs and checks; the slices are the caller's.
func (srv *Server) Settings() Reloadable {
	st := srv.live()
	return Reloadable{
		CacheRules: slices.Clone(st.cacheRules), AbsorbRules: slices.Clone(st.absorbRules),
		ShareWaits: slices.Clone(st.shareWaits), CacheScripts: slices.Clone(st.scriptList),
		Preset: st.preset, Deny: slices.Clone(st.denyList),
		ClientOutputLimit: st.outputLimit, ClientWriteTimeout: st.writeTimeout,
	}
}

// LogValue shows r's rules in a log line, one attribute each.
func (r Reloadable) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("cache", r.CacheRules), slog.Any("absorb", r.AbsorbRules),
		slog.Any("share_waits", r.ShareWaits), slog.Any("cache_scripts", r.CacheScripts),
		slog.String("preset", r.Preset), slog.Any("deny", r.Deny),
		slog.Int64("client_output_limit", r.ClientOutputLimit),
		slog.Duration("client_write_timeout", r.ClientWriteTimeout),
	)
}
