package proxy

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// TestPutBackCommand: what each blocking pop took goes back where it was,
// in the order it was in, from RESP2 and RESP3 replies alike; a timeout's
// reply puts nothing back.
func TestPutBackCommand(t *testing.T) {
	for _, tc := range []struct {
		args  string // the pop, space-separated
		reply string
		want  string // the put-back, space-separated; "" for none
	}{
		{"BLPOP q 0", "*2\r\n$1\r\nq\r\n$1\r\na\r\n", "LPUSH q a"},
		{"BRPOP q 0", "*2\r\n$1\r\nq\r\n$1\r\na\r\n", "RPUSH q a"},
		{"BZPOPMIN z 0", "*3\r\n$1\r\nz\r\n$1\r\nm\r\n$3\r\n1.5\r\n", "ZADD z NX 1.5 m"},
		{"BZPOPMAX z 0", "*3\r\n$1\r\nz\r\n$1\r\nm\r\n,1.5\r\n", "ZADD z NX 1.5 m"}, // RESP3 double
		// BLMPOP LEFT on [a b c d]: a, b, c; back with LPUSH c b a.
		{"BLMPOP 0 2 x q LEFT COUNT 3", "*2\r\n$1\r\nq\r\n*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", "LPUSH q c b a"},
		// BLMPOP RIGHT on [a b c d]: d, c; back with RPUSH c d.
		{"blmpop 0 1 q right count 2", "*2\r\n$1\r\nq\r\n*2\r\n$1\r\nd\r\n$1\r\nc\r\n", "RPUSH q c d"},
		{"BLMPOP 0 1 q LEFT", "*2\r\n$1\r\nq\r\n*1\r\n$1\r\na\r\n", "LPUSH q a"},
		{"BZMPOP 0 1 z MIN COUNT 2", "*2\r\n$1\r\nz\r\n*2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$1\r\nb\r\n$3\r\n2.5\r\n", "ZADD z NX 1 a 2.5 b"},
		{"BZMPOP 0 1 z MAX", "*2\r\n$1\r\nz\r\n*1\r\n*2\r\n$1\r\na\r\n,inf\r\n", "ZADD z NX inf a"}, // RESP3
		// Timeouts and errors put nothing back.
		{"BLPOP q 1", "*-1\r\n", ""},
		{"BLMPOP 1 1 q LEFT", "_\r\n", ""},
		{"BZMPOP 1 1 z MIN", "*-1\r\n", ""},
		{"BLMPOP 0 1 q LEFT", "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", ""},
	} {
		args := strings.Fields(tc.args)
		raw := make([][]byte, len(args))
		for i, a := range args {
			raw[i] = []byte(a)
		}
		name := strings.ToLower(args[0])
		end, ok := popEndOf(name, raw)
		if !ok {
			t.Fatalf("%s: popEndOf says it cannot be put back", tc.args)
		}
		_, got, _ := putBackCommand(name, end, []byte(tc.reply))
		want := []byte(nil)
		if tc.want != "" {
			var wargs [][]byte
			for _, a := range strings.Fields(tc.want) {
				wargs = append(wargs, []byte(a))
			}
			want = resp.AppendCommand(nil, wargs...)
		}
		if string(got) != string(want) {
			t.Errorf("%s -> %q: put back %q, want %q", tc.args, tc.reply, got, want)
		}
	}
	for _, args := range []string{"BLMOVE a b LEFT RIGHT 0", "BRPOPLPUSH a b 0", "BLMPOP 0 2 q", "BLMPOP 0 x q LEFT", "BLMPOP 0 1 q UP", "BLMPOP -1.5 9223372036854775807 GET ALPHA", "BLMPOP 0 -1 q LEFT", "BLMPOP 0 2 q LEFT"} {
		f := strings.Fields(args)
		raw := make([][]byte, len(f))
		for i, a := range f {
			raw[i] = []byte(a)
		}
		if _, ok := popEndOf(strings.ToLower(f[0]), raw); ok {
			t.Errorf("%s: popEndOf claims a put-back", args)
		}
	}
}

// TestDepartedMultiPopRace races a blocked client's departure against the
// arrival of what it pops, for the pops that take several elements at
// once (BLMPOP from either end, BZMPOP), many times. Each element must end
// up read by the client or back in its key, never both and never neither;
// list elements put back must be in their order again, and members put
// back must have their scores.
func TestDepartedMultiPopRace(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{MaxExclusive: 1})
	rng := rand.New(rand.NewSource(7))
	pops := []struct {
		name string
		pop  func(key string) []string
		push func(key string)
	}{
		{"BLMPOP LEFT", func(key string) []string { return []string{"BLMPOP", "5", "1", key, "LEFT", "COUNT", "3"} },
			func(key string) { f.Redis.Do("RPUSH", key, "a", "b", "c") }},
		{"BLMPOP RIGHT", func(key string) []string { return []string{"BLMPOP", "5", "1", key, "RIGHT", "COUNT", "3"} },
			func(key string) { f.Redis.Do("RPUSH", key, "a", "b", "c") }},
		{"BZMPOP", func(key string) []string { return []string{"BZMPOP", "5", "1", key, "MIN", "COUNT", "3"} },
			func(key string) { f.Redis.Do("ZADD", key, "1", "a", "2.5", "b", "3", "c") }},
	}
	for _, p := range pops {
		received, back := 0, 0
		for i := range 30 {
			key := fmt.Sprintf("mpop:%d", i)
			w := dialRaw(t, f.Addr)
			w.send(p.pop(key)...)
			waitUntil(t, 5*time.Second, "the client to block upstream", func() bool {
				inUse, _, _ := f.Pool.Lane().Stats()
				return inUse == 1
			})
			time.Sleep(time.Duration(1+rng.Intn(2)) * time.Millisecond) // the pop reaches Redis
			pushDelay := time.Duration(rng.Intn(2000)) * time.Microsecond
			go func() {
				time.Sleep(pushDelay)
				p.push(key)
			}()
			time.Sleep(time.Duration(rng.Intn(2000)) * time.Microsecond)
			w.conn.(interface{ CloseWrite() error }).CloseWrite()
			reply, _ := w.tryReply(5 * time.Second)
			waitLaneIdle(t, f)
			// Every element read by the client or back in the key, once.
			var left []string
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if p.name == "BZMPOP" {
					left = membersWithScores(t, f, key)
				} else {
					left = listOf(t, f, key)
				}
				if len(left)+countElements(reply) >= 3 {
					break
				}
			}
			n := countElements(reply)
			switch {
			case n+len(left) != 3:
				t.Fatalf("%s race %d: %d read by the client (%q), %v in the key: want all 3, once", p.name, i, n, reply, left)
			case n == 0 && p.name == "BZMPOP" && strings.Join(left, " ") != "a=1 b=2.5 c=3":
				t.Fatalf("%s race %d: put back as %v, want a=1 b=2.5 c=3", p.name, i, left)
			case n == 0 && p.name != "BZMPOP" && strings.Join(left, " ") != "a b c":
				t.Fatalf("%s race %d: put back as %v, want a b c", p.name, i, left)
			case n == 0:
				back++
			case n == 3:
				received++
			default:
				t.Fatalf("%s race %d: the client read %d of the 3", p.name, i, n)
			}
			f.Redis.Do("DEL", key)
		}
		t.Logf("%s: 30 races, %d popped by the client, %d put back", p.name, received, back)
	}
}

// countElements counts the a, b, c a pop's reply holds.
func countElements(reply string) int {
	n := 0
	for _, e := range []string{"$1\r\na\r\n", "$1\r\nb\r\n", "$1\r\nc\r\n"} {
		n += strings.Count(reply, e)
	}
	return n
}

// listOf returns the list at key, read directly from Redis.
func listOf(t *testing.T, f *funnel, key string) []string {
	raw, err := f.Redis.DoRaw("LRANGE", key, "0", "-1")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range resp.FlatArray([]byte(raw)) {
		out = append(out, string(e))
	}
	return out
}

// membersWithScores returns the sorted set at key as member=score, read
// directly from Redis.
func membersWithScores(t *testing.T, f *funnel, key string) []string {
	raw, err := f.Redis.DoRaw("ZRANGE", key, "0", "-1", "WITHSCORES")
	if err != nil {
		t.Fatal(err)
	}
	parts := resp.FlatArray([]byte(raw))
	var out []string
	for i := 0; i+1 < len(parts); i += 2 {
		out = append(out, string(parts[i])+"="+string(parts[i+1]))
	}
	return out
}
