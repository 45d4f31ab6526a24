package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
)

// TestSelectIsolatesDBs checks that SELECT moves a client to another db for
// plain commands, transactions, WATCH, blocking commands and pub/sub, and
// that other clients stay in theirs.
func TestSelectIsolatesDBs(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	a, b := dialRaw(t, f.Addr), dialRaw(t, f.Addr)
	steps := []struct {
		c    *rawConn
		cmd  []string
		want string
	}{
		{a, []string{"SET", "k", "db0"}, "+OK\r\n"},
		{b, []string{"SELECT", "3"}, "+OK\r\n"},
		{b, []string{"GET", "k"}, "$-1\r\n"},
		{b, []string{"SET", "k", "db3"}, "+OK\r\n"},
		{a, []string{"GET", "k"}, "$3\r\ndb0\r\n"},
		{b, []string{"GET", "k"}, "$3\r\ndb3\r\n"},
		{b, []string{"MULTI"}, "+OK\r\n"},
		{b, []string{"INCR", "n"}, "+QUEUED\r\n"},
		{b, []string{"EXEC"}, "*1\r\n:1\r\n"},
		{a, []string{"GET", "n"}, "$-1\r\n"},
		{b, []string{"WATCH", "k"}, "+OK\r\n"},
		{b, []string{"MULTI"}, "+OK\r\n"},
		{b, []string{"SET", "k", "w"}, "+QUEUED\r\n"},
		{b, []string{"EXEC"}, "*1\r\n+OK\r\n"},
		{b, []string{"RPUSH", "q", "x"}, ":1\r\n"},
		{b, []string{"BLPOP", "q", "1"}, "*2\r\n$1\r\nq\r\n$1\r\nx\r\n"},
		{a, []string{"BLPOP", "q", "0.05"}, "*-1\r\n"},
		{b, []string{"CLIENT", "INFO"}, ""},
		{b, []string{"SELECT", "99999"}, "-ERR DB index is out of range\r\n"},
		{b, []string{"GET", "k"}, "$1\r\nw\r\n"},
		{b, []string{"RESET"}, "+RESET\r\n"},
		{b, []string{"GET", "k"}, "$3\r\ndb0\r\n"},
	}
	for _, st := range steps {
		got := st.c.do(st.cmd...)
		if st.want == "" {
			if !contains(got, " db=3 ") {
				t.Errorf("CLIENT INFO after SELECT 3: %q", got)
			}
			continue
		}
		if got != st.want {
			t.Fatalf("%v: got %q, want %q", st.cmd, got, st.want)
		}
	}
	// Pub/sub is not per db: a subscriber in db 3 hears a publisher in db 0.
	sub := dialRaw(t, f.Addr)
	sub.do("SELECT", "3")
	if got := sub.do("SUBSCRIBE", "x"); got != "*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n" {
		t.Fatalf("SUBSCRIBE: %q", got)
	}
	time.Sleep(50 * time.Millisecond)
	a.do("PUBLISH", "x", "hi")
	if got := sub.reply(); got != "*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$2\r\nhi\r\n" {
		t.Fatalf("message: %q", got)
	}
	waitLaneIdle(t, f)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
