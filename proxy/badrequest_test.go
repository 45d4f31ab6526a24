package proxy

// Regression tests for issue 8, defects 4 and 5: requests Redis rejects,
// and cross-protocol (HTTP) requests.

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// endSentinel follows each input: ECHO END, whose reply shows the
// connection still served requests after the input.
const (
	endSentinel = "*2\r\n$4\r\nECHO\r\n$3\r\nEND\r\n"
	endReply    = "$3\r\nEND\r\n"
)

// protocolEdgeCases are inputs at the edges of what redis-server accepts.
// What Redis does with each is not written here: the test asks Redis.
var protocolEdgeCases = []string{
	// Lengths with leading zeros, signs and minus zero: Redis rejects them
	// (string2ll) and closes the connection.
	"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n",
	"*02\r\n$3\r\nGET\r\n$1\r\nk\r\n",
	"*1\r\n$-0\r\n",
	"*1\r\n$-0\r\n\r\n",
	"*2\r\n$3\r\nGET\r\n$-0\r\n\r\n",
	"*2\r\n$3\r\nGET\r\n$+1\r\nk\r\n",
	"*+1\r\n$4\r\nPING\r\n",
	"*-0\r\n",
	"*00\r\n",
	"*1\r\n$00\r\n\r\n",
	"*1\r\n$-1\r\n",
	"*1\r\n$ 4\r\nPING\r\n",
	"*1\r\n$4 \r\nPING\r\n",
	"*1 \r\n$4\r\nPING\r\n",
	// An earlier command in the same read is answered first.
	"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$01\r\nk\r\n",
	// Negative and zero multibulk counts are skipped, not rejected.
	"*-1\r\n", "*-2\r\n", "*0\r\n",
	// Bad trailers: Redis skips the two bytes after a bulk, whatever they
	// are, and carries on.
	"*1\r\n$3\r\nGETxx",
	"*1\r\n$4\r\nPINGxx",
	"*2\r\n$3\r\nGET\r\n$1\r\nkxx",
	"*1\r\n$4\r\nPING\r\r",
	// An empty command name is an unknown command.
	"*1\r\n$0\r\n\r\n",
	// Cross-protocol: a POST or Host: command closes the connection with
	// no reply, inline or multibulk, in any case.
	"POST / HTTP/1.1\r\n",
	"post / HTTP/1.1\r\n",
	"Host: 127.0.0.1:6380\r\n",
	"HOST: x\r\n",
	"host:\r\n",
	"*1\r\n$4\r\nPOST\r\n",
	"*1\r\n$4\r\npost\r\n",
	"*2\r\n$5\r\nHost:\r\n$1\r\nx\r\n",
	"*2\r\n$5\r\nHOST:\r\n$1\r\nx\r\n",
	// Not "host:" itself: an unknown command.
	"HOST:x\r\n",
}

// TestProtocolEdgesMatchRedis (defect 4) sends each edge case, then ECHO
// END, to Redis directly and to funnel: funnel must send the same bytes and
// close (or not) the same way. Today funnel accepts $01, *02, $-0, *-0, *00,
// $00, POST and Host: and forwards their raw bytes, so the upstream rejects
// them and closes a shared connection; and it rejects bad trailers that
// Redis skips.
func TestProtocolEdgesMatchRedis(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	bystander := dialRaw(t, f.Addr)
	bystander.do("SET", "k", "v")
	for _, in := range protocolEdgeCases {
		direct, via := dialRaw(t, f.Redis.Addr), dialRaw(t, f.Addr)
		// Writes may fail once the peer has closed; the reads tell.
		_, _ = direct.conn.Write([]byte(in + endSentinel))
		_, _ = via.conn.Write([]byte(in + endSentinel))
		want, wantClosed := readUntil(direct, endReply, 3*time.Second)
		got, gotClosed := readUntil(via, endReply, 3*time.Second)
		if got != want || gotClosed != wantClosed {
			t.Errorf("%q: funnel %q (closed %v), direct %q (closed %v)", in, got, gotClosed, want, wantClosed)
		}
		if got := bystander.do("GET", "k"); got != "$1\r\nv\r\n" {
			t.Errorf("after %q, bystander GET: %q", in, got)
		}
	}
}

// TestRejectedRequestsHurtNoOne (defect 4): while an attacker sends, over
// and over, requests Redis rejects, victims reading the same key (so their
// GETs may coalesce with the attacker's) get every value and no error.
// Today the bad bytes are forwarded; the upstream closes the shared
// connection under the victims, and victims that joined the attacker's
// flight receive its "-ERR Protocol error".
func TestRejectedRequestsHurtNoOne(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{Size: 2})
	value := strings.Repeat("v", 64<<10) // long enough for flights to overlap
	want := fmt.Sprintf("$%d\r\n%s\r\n", len(value), value)
	dialRaw(t, f.Addr).do("SET", "k", value)
	attacks := []string{
		"*02\r\n$3\r\nGET\r\n$1\r\nk\r\n",
		"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n",
		"*2\r\n$3\r\nGET\r\n$+1\r\nk\r\n",
		"*2\r\n$03\r\nGET\r\n$1\r\nk\r\n",
		"*2\r\n$3\r\nGET\r\n$-0\r\n\r\n",
		"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*-0\r\n",
		"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPOST / HTTP/1.1\r\n",
		"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nHost: x\r\n",
		"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPOST\r\n",
	}
	stop, halt := stopSignal(t)
	var victims sync.WaitGroup
	var gets, bad, leaked atomic.Int64
	var mu sync.Mutex
	var examples []string
	for v := 0; v < 6; v++ {
		c := dialRaw(t, f.Addr)
		victims.Add(1)
		go func() {
			defer victims.Done()
			// Pipelined in fours, so several victims' GETs are in flight
			// together with the attacker's.
			var burst []byte
			for i := 0; i < 4; i++ {
				burst = resp.AppendCommand(burst, []byte("GET"), []byte("k"))
			}
			for !isClosed(stop) {
				_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.conn.Write(burst); err != nil {
					bad.Add(1)
					return
				}
				for i := 0; i < 4; i++ {
					got, err := c.tryReply(5 * time.Second)
					if err != nil {
						bad.Add(1)
						return
					}
					gets.Add(1)
					if got != want {
						bad.Add(1)
						if strings.Contains(got, "Protocol error") {
							leaked.Add(1) // the attacker's own error
						}
						mu.Lock()
						if len(examples) < 5 {
							examples = append(examples, short(got))
						}
						mu.Unlock()
					}
				}
			}
		}()
	}
	sent := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); sent++ {
		a := dialRaw(t, f.Addr)
		_, _ = a.conn.Write([]byte(attacks[sent%len(attacks)]))
		readUntil(a, "", 100*time.Millisecond)
		a.conn.Close()
	}
	halt()
	victims.Wait()
	t.Logf("%d attacks; victims: %d GETs, %d bad; joined flights %d", sent, gets.Load(), bad.Load(), f.Server.cache.Stats().Joins)
	for _, e := range examples {
		t.Logf("a victim got %q", e)
	}
	if bad.Load() > 0 {
		t.Errorf("victims got %d bad replies or errors in %d GETs (%d of them a protocol error, the attacker's), want 0",
			bad.Load(), gets.Load(), leaked.Load())
	}
	if gets.Load() < 100 {
		t.Errorf("victims made only %d GETs", gets.Load())
	}
}

// TestCrossProtocolRequestRunsNothing (defect 5): a browser tricked into
// POSTing to funnel sends an HTTP request whose body holds Redis commands.
// As with Redis, the POST or Host: line closes the connection at once and
// nothing in the body runs. Today funnel forwards the POST line (the
// upstream closes a shared connection over it), keeps the client, and runs
// SET pwned yes.
func TestCrossProtocolRequestRunsNothing(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	respBody := "*3\r\n$3\r\nSET\r\n$5\r\npwned\r\n$3\r\nyes\r\n"
	inlineBody := "SET pwned yes\r\n"
	http := func(method, body string) string {
		return method + " / HTTP/1.1\r\nHost: 127.0.0.1:6380\r\nContent-Type: text/plain\r\n" +
			fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
	}
	for _, tc := range []struct {
		name  string
		parts []string // written apart, 50 ms between them
	}{
		{"POST, RESP body", []string{http("POST", respBody)}},
		{"POST, inline body", []string{http("POST", inlineBody)}},
		{"post, lower case", []string{http("post", respBody)}},
		{"GET then Host:", []string{http("GET", inlineBody)}},
		{"PUT: Host: line", []string{http("PUT", respBody)}},
		{"body written later", []string{http("POST", ""), respBody}},
		{"multibulk POST", []string{"*1\r\n$4\r\nPOST\r\n" + respBody}},
		{"multibulk Host:", []string{"*2\r\n$5\r\nHOST:\r\n$1\r\nx\r\n" + respBody}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, target := range []struct{ name, addr string }{{"direct", f.Redis.Addr}, {"funnel", f.Addr}} {
				if _, err := f.Redis.Do("DEL", "pwned"); err != nil {
					t.Fatal(err)
				}
				c := dialRaw(t, target.addr)
				start := time.Now()
				for i, p := range tc.parts {
					if i > 0 {
						time.Sleep(50 * time.Millisecond)
					}
					_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
					_, _ = c.conn.Write([]byte(p)) // fails once closed: fine
				}
				out, closed := readUntil(c, "", 500*time.Millisecond)
				took := time.Since(start)
				if !closed || took > 500*time.Millisecond {
					t.Errorf("%s: connection closed %v after %v, want closed at once", target.name, closed, took.Round(time.Millisecond))
				}
				if strings.Contains(out, "+OK") {
					t.Errorf("%s: replied %q", target.name, short(out))
				}
				// The key is checked directly, after funnel had time to
				// forward anything it would.
				time.Sleep(50 * time.Millisecond)
				if got, err := f.Redis.Do("EXISTS", "pwned"); err != nil || got != ":0\r\n" {
					t.Errorf("%s: EXISTS pwned %q %v: the body ran", target.name, got, err)
				}
			}
		})
	}
}

// TestCrossProtocolClosesAfterEarlierWrites: commands a client sent before
// a POST line in the same write run, as in Redis, and the connection ends
// only once they have: when the client sees its connection closed, its
// write is in Redis. (Closing at the line while the write was still on
// its way upstream let a reconnecting client miss its own write.)
func TestCrossProtocolClosesAfterEarlierWrites(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	for i := range 100 {
		key := fmt.Sprint("xp:", i)
		c := dialRaw(t, f.Addr)
		c.write([]byte("*5\r\n$5\r\nRPUSH\r\n$" + fmt.Sprint(len(key)) + "\r\n" + key + "\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\nPOST / HTTP/1.1\r\n"))
		if _, closed := readUntil(c, "", 5*time.Second); !closed {
			t.Fatalf("round %d: the connection was not closed", i)
		}
		if got, err := f.Redis.Do("LLEN", key); err != nil || got != ":3\r\n" {
			t.Fatalf("round %d: LLEN right after the close = %q %v, want :3 (the RPUSH before the POST line)", i, got, err)
		}
	}
}
