package glob

import (
	"bufio"
	"fmt"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/resp"
)

func TestMatchExamples(t *testing.T) {
	for _, c := range []struct {
		pat, s string
		want   bool
	}{
		{"bull:*", "bull:q:meta", true}, {"bull:*", "bul", false}, {"*", "x", true},
		{"*", "", false}, // as stringmatchlen: an empty name matches no pattern but the empty one
		{"h?llo", "hello", true}, {"h[ae]llo", "hallo", true}, {"h[^e]llo", "hello", false},
		{"h[a-b]llo", "hbllo", true}, {"h[b-a]llo", "hallo", true}, {`h\*llo`, "h*llo", true},
		{`h\*llo`, "hello", false}, {"a[", "a", false}, {"a[b", "ab", true}, {"**a", "a", true},
		{"", "", true}, {"", "a", false}, {"a*", "a", true}, {"[\\]]", "]", true},
	} {
		if got := Match(c.pat, c.s); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pat, c.s, got, c.want)
		}
	}
}

// TestMatchAgreesWithRedis compares Match with redis-server's own matcher
// (KEYS uses stringmatchlen) on random patterns and names.
func TestMatchAgreesWithRedis(t *testing.T) {
	rs := redistest.Start(t)
	c, err := net.DialTimeout("tcp", rs.Addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	rd := bufio.NewReader(c)
	rng := rand.New(rand.NewSource(1))
	const alphabet = "ab*?[]^-\\c"
	randStr := func(n int) string {
		var b strings.Builder
		for i := rng.Intn(n + 1); i > 0; i-- {
			b.WriteByte(alphabet[rng.Intn(len(alphabet))])
		}
		return b.String()
	}
	var names []string
	seen := map[string]bool{}
	for len(names) < 200 {
		if s := randStr(6); s != "" && !seen[s] {
			seen[s] = true
			names = append(names, s)
		}
	}
	send := func(args ...string) {
		var bargs [][]byte
		for _, a := range args {
			bargs = append(bargs, []byte(a))
		}
		if _, err := c.Write(resp.AppendCommand(nil, bargs...)); err != nil {
			t.Fatal(err)
		}
	}
	line := func() string {
		l, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSuffix(l, "\r\n")
	}
	for _, n := range names {
		send("SET", n, "1")
		if l := line(); l != "+OK" {
			t.Fatal(l)
		}
	}
	checked := 0
	for i := 0; i < 400; i++ {
		pat := randStr(7)
		send("KEYS", pat)
		var count int
		fmt.Sscanf(line(), "*%d", &count)
		got := map[string]bool{}
		for j := 0; j < count; j++ {
			line()
			got[line()] = true
		}
		for _, n := range names {
			checked++
			if Match(pat, n) != got[n] {
				t.Errorf("pattern %q, name %q: Match = %v, Redis = %v", pat, n, Match(pat, n), got[n])
			}
		}
	}
	t.Logf("%d pattern/name pairs agree with redis-server", checked)
}
