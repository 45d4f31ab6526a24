package script

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var reads = map[string]bool{"get": true, "zscore": true, "lpos": true, "hget": true, "zcard": true, "llen": true, "exists": true, "hgetall": true, "zrange": true, "lrange": true, "scard": true, "type": true}

func readOnly(name string) bool { return reads[name] }

func TestReadOnly(t *testing.T) {
	for _, c := range []struct {
		body string
		want bool
	}{
		{`return redis.call('GET', KEYS[1])`, true},
		{`return redis.pcall("get", KEYS[1])`, true},
		{`local rcall = redis.call
if rcall("ZSCORE", KEYS[1], ARGV[1]) then return 1 end
return rcall('LPOS', KEYS[2], ARGV[1])`, true},
		{`return redis.call('SET', KEYS[1], 'x')`, false},
		{`local c = 'GET'; return redis.call(c, KEYS[1])`, false},
		{`return redis.call('GE' .. 'T', KEYS[1])`, false},
		{`local f = redis.call; local t = {f}; return t[1]('SET', 'k', 'v')`, false},
		{`return redis['call']('SET', 'k', 'v')`, false},
		{`local rcall = redis.call
rcall("GET", KEYS[1])
rcall("DEL", KEYS[1])`, false},
		{`-- redis.call('SET', 'k', 'v') only in a comment
return redis.call('GET', KEYS[1])`, true},
		{`--[[ redis.call('SET', 'k', 'v') in a long comment ]]
return redis.call('GET', KEYS[1])`, true},
		{`local s = "redis.call('SET', 'k', 'v')" return redis.call('GET', KEYS[1])`, true},
		{`return redis.call(unpack(ARGV))`, false},
		{`return redis.call('G\69T', KEYS[1])`, false},
		{`local x = 'unterminated`, false},
		{`return 1`, true},
	} {
		if got := ReadOnly([]byte(c.body), readOnly); got != c.want {
			t.Errorf("ReadOnly(%q) = %v, want %v", c.body, got, c.want)
		}
	}
}

// TestBullMQScripts checks BullMQ's own scripts, as installed for the
// compatibility tests: its job status reads only read, its state changes
// write. getCounts and getRanges read too, but they still RPOP a marker
// that BullMQ 5 left in a wait list, so they may write: funnel must not
// cache them. The read-only command list here is Redis's (the ReadOnly
// flag).
func TestBullMQScripts(t *testing.T) {
	dir := filepath.Join("..", "compat", "node", "node_modules", "bullmq", "dist", "cjs", "scripts")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("BullMQ's scripts (make node-deps installs them): %v", err)
	}
	content := regexp.MustCompile("(?s)const content = `(.*?)`;")
	redisReads := map[string]bool{"zscore": true, "lpos": true, "zcard": true, "llen": true, "scard": true, "exists": true, "hget": true,
		"hgetall": true, "hmget": true, "zrange": true, "lrange": true, "zrangebyscore": true, "zrevrange": true, "zcount": true,
		"type": true, "hexists": true, "get": true, "smembers": true, "sismember": true, "zrank": true, "lindex": true, "pttl": true,
		"hlen": true, "zrevrangebyscore": true, "mget": true, "ttl": true, "xlen": true, "xrange": true, "xrevrange": true, "zmscore": true, "sscan": true, "hscan": true, "zscan": true}
	wantRO := map[string]bool{"getStateV2": true, "getState": true}
	for _, e := range entries {
		name := strings.SplitN(e.Name(), "-", 2)[0]
		src, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasSuffix(e.Name(), ".js") {
			continue
		}
		m := content.FindSubmatch(src)
		if m == nil {
			continue
		}
		got := ReadOnly(m[1], func(c string) bool { return redisReads[c] })
		switch {
		case wantRO[name] && !got:
			t.Errorf("%s: only reads, but was judged to write", name)
		case strings.HasPrefix(name, "move") || strings.HasPrefix(name, "add") || strings.HasPrefix(name, "remove") || name == "updateProgress" || name == "getCounts" || name == "getRanges":
			if got {
				t.Errorf("%s: writes, but was judged read-only", name)
			}
		}
	}
}
