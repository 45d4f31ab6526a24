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

func TestWrittenKeys(t *testing.T) {
	cases := []struct {
		name, body string
		written    []int // KEYS that may be written
		read       []int // KEYS only read
	}{
		{"direct read and write", `redis.call("GET", KEYS[1]); redis.call("SET", KEYS[2], "x")`, []int{2}, []int{1}},
		{"alias of call", `local rcall = redis.call
local a = KEYS[1]
return rcall("HGET", a, "f")`, nil, []int{1}},
		{"function parameter read", `local rcall = redis.call
local function meta(k, other) return rcall("HGET", k, "paused") end
meta(KEYS[3], KEYS[1])
rcall("DEL", KEYS[1])`, []int{1}, []int{3}},
		{"function parameter written", `local function clear(k) redis.call("DEL", k) end
clear(KEYS[1])`, []int{1}, nil},
		{"passed on twice", `local function inner(x) redis.call("INCR", x) end
local function outer(y) inner(y) end
local m = KEYS[2]
outer(m)`, []int{2}, nil},
		{"recursive function", `local function f(k, n) if n > 0 then return f(k, n - 1) end return redis.call("GET", k) end
return f(KEYS[1], 3)`, nil, []int{1}},
		{"unknown function", `return cjson.encode(KEYS[1])`, []int{1}, nil},
		{"table", `local t = {KEYS[1]}; redis.call("DEL", unpack(t))`, []int{1}, nil},
		{"concatenation", `redis.call("DEL", KEYS[1] .. ":x")`, []int{1}, nil},
		{"returned", `return KEYS[1]`, []int{1}, nil},
		{"dynamic command", `local c = ARGV[1]; redis.call(c, KEYS[1])`, []int{1}, nil},
		{"value of a write", `redis.call("SET", KEYS[2], KEYS[1])`, []int{1, 2}, nil},
		{"reassigned alias", `local k = KEYS[1]
k = KEYS[2]
redis.call("DEL", k)`, []int{1, 2}, nil},
		{"varargs", `local function f(...) redis.call("GET", ...) end f(KEYS[1])`, []int{1}, nil},
		{"field of a table", `local t = {}; t.k = KEYS[1]; redis.call("DEL", t.k)`, []int{1}, nil},
		{"method on the key", `redis.call("DEL", KEYS[1]:sub(1, 3))`, []int{1}, nil},
		{"pcall of call", `pcall(redis.call, "DEL", KEYS[1])`, []int{1}, nil},
		{"comparison only", `if KEYS[1] == KEYS[2] then return 1 end redis.call("GET", KEYS[1])`, []int{1, 2}, nil},
		{"number of keys", `for i = 1, #KEYS do end return redis.call("GET", KEYS[1])`, nil, []int{1}},
		{"escaped command name", `redis.call("G\ET", KEYS[1])`, []int{1}, nil},
	}
	for _, c := range cases {
		w := WrittenKeys([]byte(c.body), readOnly, keepsTTL)
		judged(t, c.name, w.MayWrite, c.written, c.read, "written")
	}
	for _, body := range []string{`redis.call("DEL", KEYS[ARGV[1]])`, `local k = KEYS; redis.call("GET", k[1])`, `redis.call("DEL", unpack(KEYS))`, `redis.call("GET", "unterminated)`} {
		if w := WrittenKeys([]byte(body), readOnly, keepsTTL); !w.MayWrite(1) || !w.MayWrite(2) || !w.MayExpire(1) {
			t.Errorf("%q: not followed, so every key may be written", body)
		}
	}
}

// TestBullMQKeyWrites: BullMQ's moveToActive only reads the queue's meta
// hash (KEYS[9]), which every new Queue rewrites, so running it does not
// spoil what funnel knows of that hash; addStandardJob may write it.
func TestBullMQKeyWrites(t *testing.T) {
	body := func(name string) []byte {
		matches, _ := filepath.Glob(filepath.Join("..", "compat", "node", "node_modules", "bullmq", "dist", "cjs", "scripts", name+"-*.js"))
		if len(matches) != 1 {
			t.Fatalf("BullMQ's %s script (make node-deps installs it): %v", name, matches)
		}
		src, err := os.ReadFile(matches[0])
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile("(?s)const content = `(.*?)`;").FindSubmatch(src)
		if m == nil {
			t.Fatalf("%s: no script content", name)
		}
		return m[1]
	}
	reads := func(c string) bool {
		switch c {
		case "hmget", "hget", "hexists", "zcard", "llen", "exists", "get", "pttl", "zrange", "zscore", "lrange", "hgetall", "ttl", "zrangebyscore", "xlen":
			return true
		}
		return false
	}
	mta := WrittenKeys(body("moveToActive"), reads, keepsTTL)
	if mta.MayWrite(9) {
		t.Error("moveToActive: KEYS[9] (meta) judged written; it only reads it")
	}
	for _, k := range []int{1, 2, 4, 11} { // wait, active, events, marker
		if !mta.MayWrite(k) {
			t.Errorf("moveToActive: KEYS[%d] judged only read", k)
		}
	}
	add := WrittenKeys(body("addStandardJob"), reads, keepsTTL)
	if !add.MayWrite(3) {
		t.Error("addStandardJob: KEYS[3] (meta) judged only read; it sets opts.maxLenEvents when missing")
	}
	if add.MayExpire(3) {
		t.Error("addStandardJob: KEYS[3] (meta) judged to maybe get an expiry; it only reads and HSETs it")
	}
}

// keepsTTL is the test's list of writes that never set an expiry.
func keepsTTL(name string) bool {
	switch name {
	case "hset", "del", "incr", "lpush", "zadd", "hincrby":
		return true
	}
	return false
}

func TestExpiringKeys(t *testing.T) {
	cases := []struct {
		name, body string
		expire     []int // KEYS that may be given an expiry
		keep       []int // KEYS that keep having none
	}{
		{"hset keeps, expire sets", `redis.call("HSET", KEYS[1], "f", "v"); redis.call("PEXPIRE", KEYS[2], 100)`, []int{2}, []int{1}},
		{"through a function", `local function touch(k) redis.call("HINCRBY", k, "n", 1) end touch(KEYS[1])`, nil, []int{1}},
		{"set may expire", `redis.call("SET", KEYS[1], "v", "PX", ARGV[1])`, []int{1}, nil},
		{"unknown function", `helper(KEYS[1])`, []int{1}, nil},
		{"read only", `return redis.call("GET", KEYS[1])`, nil, []int{1}},
	}
	for _, c := range cases {
		w := WrittenKeys([]byte(c.body), readOnly, keepsTTL)
		judged(t, c.name, w.MayExpire, c.expire, c.keep, "given an expiry")
	}
}

// judged checks that may holds for every KEYS index of yes and none of no.
func judged(t *testing.T, name string, may func(int) bool, yes, no []int, what string) {
	t.Helper()
	for _, i := range yes {
		if !may(i) {
			t.Errorf("%s: KEYS[%d] judged never %s", name, i, what)
		}
	}
	for _, i := range no {
		if may(i) {
			t.Errorf("%s: KEYS[%d] judged maybe %s", name, i, what)
		}
	}
}
