package command

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestKeyPositionsMatchRedis checks the table's key finding against a real
// redis-server's COMMAND GETKEYS for commands of every key-spec form.
func TestKeyPositionsMatchRedis(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	cases := []string{
		"GET k",
		"MSET a 1 b 2 c 3",
		"MGET a b c",
		"DEL a b",
		"EVAL return 1 2 k1 k2 arg",
		"EVALSHA abc 1 k1 arg",
		"FCALL f 2 a b x",
		"ZUNIONSTORE dst 2 s1 s2 WEIGHTS 1 2",
		"XREAD COUNT 2 STREAMS s1 s2 0 0",
		"XREADGROUP GROUP g c BLOCK 10 STREAMS s1 >",
		"BLMPOP 0 2 l1 l2 LEFT",
		"LMOVE src dst LEFT RIGHT",
		"SINTERCARD 2 a b LIMIT 1",
		"GEORADIUS g 0 0 1 km STORE dst",
		"OBJECT ENCODING k",
		"XINFO STREAM s",
		"BITOP AND dst a b",
		"HGETALL h",
		"SET k v EX 10",
	}
	for _, c := range cases {
		args := strings.Fields(c)
		raw := make([]any, 0, len(args)+2)
		raw = append(raw, "COMMAND", "GETKEYS")
		var bargs [][]byte
		for _, a := range args {
			raw = append(raw, a)
			bargs = append(bargs, []byte(a))
		}
		want, err := rdb.Do(ctx, raw...).StringSlice()
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		info := Lookup(bargs)
		if info == nil {
			t.Fatalf("%s: not in table", c)
		}
		pos, _ := info.KeyPositions(nil, bargs)
		var got []string
		for _, p := range pos {
			got = append(got, args[p])
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: keys %q, redis says %q", c, got, want)
		}
	}
}

func TestLookupAndArity(t *testing.T) {
	info := Lookup([][]byte{[]byte("ClIeNt"), []byte("SETNAME"), []byte("x")})
	if info == nil || info.Name != "client|setname" || !info.CheckArity([][]byte{nil, nil, nil}) {
		t.Fatalf("client setname: %+v", info)
	}
	if Lookup([][]byte{[]byte("nosuchcommand")}) != nil {
		t.Fatal("unknown command found")
	}
	get := Lookup([][]byte{[]byte("get")})
	if !get.Has(ReadOnly) || get.Has(Write) || get.CheckArity([][]byte{nil}) {
		t.Fatalf("get: %+v", get)
	}
	if !Lookup([][]byte{[]byte("blpop")}).Has(Blocking) || !Lookup([][]byte{[]byte("randomkey")}).Has(Nondeterministic) {
		t.Fatal("flags missing")
	}
	if _, complete := Lookup([][]byte{[]byte("sort")}).KeyPositions(nil, [][]byte{[]byte("sort"), []byte("k")}); complete {
		t.Fatal("SORT keys must be reported incomplete")
	}
}

// TestAll checks that All lists each command and subcommand once, in order,
// and that every entry is found again by Lookup.
func TestAll(t *testing.T) {
	all := All()
	if len(all) < 200 {
		t.Fatalf("All returned %d entries", len(all))
	}
	for i, info := range all {
		if i > 0 && all[i-1].Name >= info.Name {
			t.Fatalf("not sorted or duplicated: %q then %q", all[i-1].Name, info.Name)
		}
		var args [][]byte
		for _, part := range strings.Split(info.Name, "|") {
			args = append(args, []byte(part))
		}
		if got := Lookup(args); got != info {
			t.Fatalf("Lookup(%q) = %v", info.Name, got)
		}
	}
}

// TestIDsAreDense: every command and subcommand, the ones added by hand
// included, has its own ID below Count().
func TestIDsAreDense(t *testing.T) {
	all := All()
	if Count() != len(all) {
		t.Fatalf("Count() = %d, the table has %d", Count(), len(all))
	}
	seen := make([]bool, Count())
	for _, info := range all {
		if info.ID < 0 || info.ID >= Count() || seen[info.ID] {
			t.Fatalf("%s: ID %d is out of range or taken", info.Name, info.ID)
		}
		seen[info.ID] = true
	}
	for _, name := range []string{"waitaof", "client|setinfo", "client|no-touch", "get", "set"} {
		info := Lookup(argsOf(name))
		if info == nil || info.Name != name || all[info.ID] != info {
			t.Fatalf("%s: ID does not lead back to it", name)
		}
	}
}

// argsOf splits a "container|sub" name into the arguments that name it.
func argsOf(name string) [][]byte {
	var args [][]byte
	for _, part := range strings.Split(name, "|") {
		args = append(args, []byte(part))
	}
	return args
}
