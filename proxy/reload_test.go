package proxy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
)

// getsUpstream returns how many GETs the upstream ran for two GETs of key
// through c.
func getsUpstream(t *testing.T, f *funnel, c *rawConn, key string) int {
	t.Helper()
	before := f.Redis.CommandStats(t)["get"]
	for range 2 {
		if got := c.do("GET", key); got != "$1\r\nv\r\n" {
			t.Fatalf("GET %s: %q", key, got)
		}
	}
	return f.Redis.CommandStats(t)["get"] - before
}

// TestReloadCacheRulesAndDeny: Reload changes, for the next commands of a
// connection that stays open, which keys are cached, drops what was cached
// under the old rules, changes the deny list, and shows all of it in INFO
// funnel.
func TestReloadCacheRulesAndDeny(t *testing.T) {
	f := startFunnel(t, Options{CacheRules: []CacheRule{{Pattern: "c:*", TTL: time.Minute}}}, pool.Options{})
	c := dialRaw(t, f.Addr)
	c.do("SET", "c:k", "v")
	c.do("SET", "d:k", "v")
	if n := getsUpstream(t, f, c, "c:k"); n != 1 {
		t.Fatalf("before: c:k read upstream %d times, want 1 (cached)", n)
	}
	if n := getsUpstream(t, f, c, "d:k"); n != 2 {
		t.Fatalf("before: d:k read upstream %d times, want 2 (not cached)", n)
	}
	if got := c.do("DBSIZE"); got != ":2\r\n" {
		t.Fatalf("DBSIZE before the deny: %q", got)
	}

	if err := f.Server.Reload(Reloadable{CacheRules: []CacheRule{{Pattern: "d:*", TTL: time.Minute}}, Deny: []string{"dbsize"}}); err != nil {
		t.Fatal(err)
	}
	if n := getsUpstream(t, f, c, "c:k"); n != 2 {
		t.Errorf("after: c:k read upstream %d times, want 2 (no rule any more)", n)
	}
	if n := getsUpstream(t, f, c, "d:k"); n != 1 {
		t.Errorf("after: d:k read upstream %d times, want 1 (cached)", n)
	}
	if got := c.do("DBSIZE"); got != "-ERR funnel: DBSIZE is not supported through the proxy\r\n" {
		t.Errorf("DBSIZE after the deny: %q", got)
	}
	info := c.do("INFO", "funnel")
	for _, want := range []string{"funnel_cache_rules:d:*=1m0s\r\n", "funnel_deny:dbsize\r\n"} {
		if !strings.Contains(info, want) {
			t.Errorf("INFO funnel lacks %q:\n%s", want, info)
		}
	}

	// A shorter TTL for the same pattern: what the longer one stored is
	// dropped, not served for its old minute.
	if err := f.Server.Reload(Reloadable{CacheRules: []CacheRule{{Pattern: "d:*", TTL: 30 * time.Second}}}); err != nil {
		t.Fatal(err)
	}
	if n := getsUpstream(t, f, c, "d:k"); n != 1 {
		t.Errorf("after shortening: d:k read upstream %d times, want 1 (dropped, then cached)", n)
	}
	if got := c.do("DBSIZE"); got != ":2\r\n" {
		t.Errorf("DBSIZE after the deny was lifted: %q", got)
	}
	// A reload that does not touch the rules keeps what is cached.
	if err := f.Server.Reload(Reloadable{CacheRules: []CacheRule{{Pattern: "d:*", TTL: 30 * time.Second}}, ClientOutputLimit: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if n := getsUpstream(t, f, c, "d:k"); n != 0 {
		t.Errorf("after an unrelated reload: d:k read upstream %d times, want 0", n)
	}

	// A bad reload changes nothing.
	if err := f.Server.Reload(Reloadable{Preset: "nope"}); !errors.Is(err, ErrUnknownPreset) {
		t.Fatalf("unknown preset: %v", err)
	}
	if n := getsUpstream(t, f, c, "d:k"); n != 0 {
		t.Errorf("after a rejected reload: d:k read upstream %d times, want 0", n)
	}
}

// TestReloadAbsorbRules: absorb state learnt under the old rules is
// dropped when they change, and a key the new rules do not name is no
// longer absorbed.
func TestReloadAbsorbRules(t *testing.T) {
	f := startFunnel(t, Options{AbsorbRules: []AbsorbRule{{Pattern: "meta:*", Window: time.Minute}}}, pool.Options{})
	c := dialRaw(t, f.Addr)
	learnt(t, f, c, "HSET", "meta:q", "f", "1")
	base := hsetCount(t, f)
	if got := c.do("HSET", "meta:q", "f", "1"); got != ":0\r\n" || hsetCount(t, f) != base {
		t.Fatalf("before: HSET not absorbed: %q", got)
	}
	// Same pattern, another window: what was learnt is forgotten.
	if err := f.Server.Reload(Reloadable{AbsorbRules: []AbsorbRule{{Pattern: "meta:*", Window: 2 * time.Minute}}}); err != nil {
		t.Fatal(err)
	}
	c.do("HSET", "meta:q", "f", "1")
	if n := hsetCount(t, f) - base; n != 1 {
		t.Fatalf("after the window changed: upstream ran %d HSETs, want 1 (knowledge dropped)", n)
	}
	learnt(t, f, c, "HSET", "meta:q", "f", "1")
	if err := f.Server.Reload(Reloadable{}); err != nil {
		t.Fatal(err)
	}
	base = hsetCount(t, f)
	pttls := f.Redis.CommandStats(t)["pttl"]
	c.do("HSET", "meta:q", "f", "1")
	// Under a rule funnel would now learn the hash (and ask its PTTL);
	// give it the time, then the same write must still go upstream.
	time.Sleep(200 * time.Millisecond)
	c.do("HSET", "meta:q", "f", "1")
	if n := hsetCount(t, f) - base; n != 2 {
		t.Fatalf("with no rule: upstream ran %d HSETs, want 2", n)
	}
	if n := f.Redis.CommandStats(t)["pttl"] - pttls; n != 0 {
		t.Errorf("with no rule: funnel asked PTTL %d times", n)
	}
}

// TestReloadPresetAndInfo: a preset given by Reload expands to its rules,
// and INFO funnel shows the effective configuration.
func TestReloadPresetAndInfo(t *testing.T) {
	f := startFunnel(t, Options{ExclusiveWait: 3 * time.Second, InfoTTL: -1}, pool.Options{Size: 2, MaxExclusive: 5})
	c := dialRaw(t, f.Addr)
	info := c.do("INFO", "funnel")
	for _, want := range []string{
		"funnel_cache_rules:\r\n", "funnel_absorb_rules:\r\n", "funnel_share_waits:\r\n",
		"funnel_cache_script_count:0\r\n", "funnel_cache_scripts:\r\n", "funnel_deny:\r\n", "funnel_preset:\r\n",
		"funnel_coalesce:1\r\n", "funnel_pool_size:2\r\n", "funnel_max_exclusive:5\r\n", "funnel_exclusive_wait_ms:3000\r\n",
		"funnel_max_memory:1073741824\r\n", "funnel_client_output_limit:536870912\r\n",
		"funnel_client_write_timeout_ms:30000\r\n", "funnel_info_ttl_ms:0\r\n",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("INFO funnel at start lacks %q", want)
		}
	}
	sha := strings.Repeat("ab", 20)
	err := f.Server.Reload(Reloadable{
		Preset: "bullmq", CacheRules: []CacheRule{{Pattern: "bull:*", TTL: time.Second}}, CacheScripts: []string{strings.ToUpper(sha)},
		ClientOutputLimit: 1 << 20, ClientWriteTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	info = c.do("INFO", "funnel")
	for _, want := range []string{
		"funnel_cache_rules:bull:*=1s\r\n", // the operator's rule replaces the preset's for its pattern
		"funnel_absorb_rules:bull:*:meta=1m0s\r\n", "funnel_share_waits:bull:*\r\n",
		"funnel_cache_script_count:2\r\n", "funnel_cache_scripts:5e107aa7dd123c4a80fc40151f8d25596c39353a," + sha + "\r\n",
		"funnel_preset:bullmq\r\n", "funnel_client_output_limit:1048576\r\n", "funnel_client_write_timeout_ms:5000\r\n",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("INFO funnel after the reload lacks %q:\n%s", want, info)
		}
	}
	if got := f.Server.Settings(); got.Preset != "bullmq" || len(got.CacheRules) != 1 || len(got.ShareWaits) != 1 {
		t.Errorf("Settings: %+v", got)
	}
}

// TestReloadNeedsCache: a server made without a cache refuses cache rules
// (it did not track writes until now), and keeps its settings.
func TestReloadNeedsCache(t *testing.T) {
	f := startFunnel(t, Options{DisableCoalesce: true, Deny: []string{"dbsize"}}, pool.Options{})
	err := f.Server.Reload(Reloadable{CacheRules: []CacheRule{{Pattern: "c:*", TTL: time.Second}}})
	if !errors.Is(err, ErrReloadNeedsCache) {
		t.Fatalf("Reload: %v", err)
	}
	c := dialRaw(t, f.Addr)
	if got := c.do("DBSIZE"); !strings.HasPrefix(got, "-ERR funnel: DBSIZE") {
		t.Errorf("the deny list changed on a failed reload: %q", got)
	}
}
