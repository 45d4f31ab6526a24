package cache

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1000, 0)

// reader is a test Reader that joins or not, as told.
type reader struct{ join bool }

func (r *reader) MayHit() bool     { return true }
func (r *reader) CanJoin(any) bool { return r.join }
func (r *reader) Lead() any        { return nil }

func TestHitMissAndTTL(t *testing.T) {
	c := New(1<<20, 1<<10)
	_, joined, f := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, nil)
	if joined || f == nil {
		t.Fatal("first lookup must lead")
	}
	c.Finish(f, []byte("$1\r\nv\r\n"), nil)
	if hit, _, _ := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0.Add(999*time.Millisecond), nil); string(hit) != "$1\r\nv\r\n" {
		t.Fatalf("hit = %q", hit)
	}
	if hit, _, f := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0.Add(time.Second), nil); hit != nil || f == nil {
		t.Fatal("served a reply as old as its TTL")
	}
	if hit, _, _ := c.Lookup(1, []byte("get|k"), bs("k"), time.Second, t0, nil); hit != nil {
		t.Fatal("another db shares the entry")
	}
}

func TestWriteDropsEntry(t *testing.T) {
	c := New(1<<20, 1<<10)
	_, _, f := c.Lookup(0, []byte("mget|a|b"), bs("a", "b"), time.Second, t0, nil)
	c.Finish(f, []byte("*2\r\n$-1\r\n$-1\r\n"), nil)
	c.EndWrite(c.BeginWrite(0, [][]byte{[]byte("b")}, time.Time{}, nil))
	if hit, _, _ := c.Lookup(0, []byte("mget|a|b"), bs("a", "b"), time.Second, t0, nil); hit != nil {
		t.Fatal("entry survived a write to one of its keys")
	}
	if s := c.Stats(); s.Entries != 0 {
		t.Fatalf("entries = %d", s.Entries)
	}
}

// TestFillRace is the race the key clock exists for: a write is sent while
// a read is in flight, so the read's reply may predate the write and must
// not be stored; a read after the write must not join the older flight.
func TestFillRace(t *testing.T) {
	c := New(1<<20, 1<<10)
	_, _, f := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, nil)
	c.EndWrite(c.BeginWrite(0, [][]byte{[]byte("k")}, time.Time{}, nil))
	hit, joined, f2 := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, &reader{join: true})
	if hit != nil || joined || f2 == nil {
		t.Fatal("a read after a write joined a flight sent before it")
	}
	c.Finish(f, []byte("$3\r\nold\r\n"), nil)
	if s := c.Stats(); s.DroppedFills != 1 || s.Entries != 0 {
		t.Fatalf("stale fill kept: %+v", s)
	}
	c.Finish(f2, []byte("$3\r\nnew\r\n"), nil)
	if hit, _, _ := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, nil); string(hit) != "$3\r\nnew\r\n" {
		t.Fatalf("hit = %q", hit)
	}
	c.EndWrite(c.BeginWriteDB(-1))
	if hit, _, _ := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, nil); hit != nil {
		t.Fatal("entry survived FLUSHALL")
	}
}

func TestJoinAndErrors(t *testing.T) {
	c := New(1<<20, 8)
	_, _, f := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, nil)
	rd := &reader{join: true}
	for i := 0; i < 3; i++ {
		_, joined, lead := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, rd)
		if !joined || lead != nil {
			t.Fatal("identical read did not join")
		}
	}
	if _, joined, _ := c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, &reader{join: false}); joined {
		t.Fatal("joined although the reader refused")
	}
	if joiners := c.Finish(f, []byte("-ERR x\r\n"), nil); len(joiners) != 3 || joiners[0] != rd {
		t.Fatalf("Finish returned %d joiners, want the 3", len(joiners))
	}
	if s := c.Stats(); s.Entries != 0 || s.Joins != 3 {
		t.Fatalf("error reply stored or joins miscounted: %+v", s)
	}
	_, _, f = c.Lookup(0, []byte("get|big"), bs("big"), time.Second, t0, nil)
	c.Finish(f, []byte("$9\r\n123456789\r\n"), nil)
	if s := c.Stats(); s.Entries != 0 {
		t.Fatal("value over the size limit stored")
	}
}

func TestLRUBound(t *testing.T) {
	c := New(10_000, 1<<10)
	for i := 0; i < 1000; i++ {
		cmd := fmt.Sprint("get|k", i)
		_, _, f := c.Lookup(0, []byte(cmd), bs(fmt.Sprint("k", i)), time.Minute, t0, nil)
		c.Finish(f, make([]byte, 100), nil)
		if s := c.Stats(); s.Bytes > 10_000 {
			t.Fatalf("bytes %d over the bound", s.Bytes)
		}
	}
	s := c.Stats()
	if s.Evictions == 0 || s.Entries == 0 {
		t.Fatalf("%+v", s)
	}
	// The newest entry survives, the oldest went.
	if hit, _, _ := c.Lookup(0, []byte("get|k999"), bs("k999"), time.Minute, t0, nil); hit == nil {
		t.Fatal("newest entry evicted")
	}
	if hit, _, _ := c.Lookup(0, []byte("get|k0"), bs("k0"), time.Minute, t0, nil); hit != nil {
		t.Fatal("oldest entry kept")
	}
	if len(c.keys[0]) > int(s.Entries)+2 {
		t.Fatalf("%d keys tracked for %d entries", len(c.keys[0]), s.Entries)
	}
}

// TestPendingWrite covers the window between a write being sent and its
// reply: a read then may run before the write on another connection, so it
// must neither join, fill, nor be served; and a read sent in that window is
// not stored even if it finishes after the write ended.
func TestPendingWrite(t *testing.T) {
	c := New(1<<20, 1<<10)
	get := func(rd Reader) ([]byte, bool, *Flight) {
		return c.Lookup(0, []byte("get|k"), bs("k"), time.Second, t0, rd)
	}
	_, _, f := get(nil)
	c.Finish(f, []byte("$2\r\nv0\r\n"), nil)
	w := c.BeginWrite(0, [][]byte{[]byte("k")}, time.Time{}, nil)
	hit, _, during := get(&reader{join: true})
	if hit != nil || during == nil {
		t.Fatal("served from the cache while a write to the key was pending")
	}
	if _, joined, _ := get(&reader{join: true}); joined {
		t.Fatal("joined a read of a pending key")
	}
	c.EndWrite(w)
	c.Finish(during, []byte("$2\r\nv0\r\n"), nil)
	if hit, _, _ := get(nil); hit != nil {
		t.Fatal("a read sent while the write was pending filled the cache")
	}
	_, _, after := get(nil)
	c.Finish(after, []byte("$2\r\nv1\r\n"), nil)
	if hit, _, _ := get(nil); string(hit) != "$2\r\nv1\r\n" {
		t.Fatalf("after the write: hit = %q", hit)
	}
	wdb := c.BeginWriteDB(0)
	if hit, _, _ := get(nil); hit != nil {
		t.Fatal("served while a whole-db write was pending")
	}
	c.EndWrite(wdb)
}

// TestExpiryBoundsEntries checks that an expiry a write gave a key caps the
// life of a reply read after it.
func TestExpiryBoundsEntries(t *testing.T) {
	c := New(1<<20, 1<<10)
	now := time.Now()
	c.EndWrite(c.BeginWrite(0, [][]byte{[]byte("k")}, now.Add(100*time.Millisecond), nil))
	if got := c.KnownExpiry(0, []byte("k")); !got.Equal(now.Add(100 * time.Millisecond).Truncate(0)) {
		t.Fatalf("KnownExpiry = %v", got)
	}
	_, _, f := c.Lookup(0, []byte("get|k"), bs("k"), time.Minute, now.Add(time.Millisecond), nil)
	c.Finish(f, []byte("$1\r\nv\r\n"), nil)
	if hit, _, _ := c.Lookup(0, []byte("get|k"), bs("k"), time.Minute, now.Add(50*time.Millisecond), nil); hit == nil {
		t.Fatal("no hit before the expiry")
	}
	if hit, _, _ := c.Lookup(0, []byte("get|k"), bs("k"), time.Minute, now.Add(100*time.Millisecond), nil); hit != nil {
		t.Fatal("served past the key's expiry")
	}
}

// TestReset: Reset drops stored replies and known hashes, and a read in
// flight across it fills nothing.
func TestReset(t *testing.T) {
	c := New(1<<20, 1<<10)
	_, _, f := c.Lookup(0, []byte("get|a"), bs("a"), time.Minute, t0, nil)
	c.Finish(f, []byte("$1\r\nv\r\n"), nil)
	w := c.BeginWrite(0, [][]byte{[]byte("h")}, time.Time{}, nil)
	_, _, inFlight := c.Lookup(0, []byte("get|b"), bs("b"), time.Minute, t0, nil)
	c.Reset()
	if _, _, ok := c.LearnHash(w, 0, []byte("h"), [][]byte{[]byte("f"), []byte("v")}, t0.Add(time.Minute)); ok {
		t.Error("a write that began before Reset taught a hash")
	}
	c.EndWrite(w)
	c.Finish(inFlight, []byte("$1\r\nw\r\n"), nil)
	if hit, _, _ := c.Lookup(0, []byte("get|a"), bs("a"), time.Minute, t0, nil); hit != nil {
		t.Error("a reply stored before Reset was served")
	}
	if hit, _, _ := c.Lookup(0, []byte("get|b"), bs("b"), time.Minute, t0, nil); hit != nil {
		t.Error("a read in flight across Reset filled the cache")
	}
	if st := c.Stats(); st.DroppedFills != 1 {
		t.Errorf("dropped fills %d, want 1", st.DroppedFills)
	}
	// After Reset the cache works as before.
	_, _, f = c.Lookup(0, []byte("get|c"), bs("c"), time.Minute, t0, nil)
	c.Finish(f, []byte("$1\r\nx\r\n"), nil)
	if hit, _, _ := c.Lookup(0, []byte("get|c"), bs("c"), time.Minute, t0, nil); hit == nil {
		t.Error("no hit after Reset")
	}
	w = c.BeginWrite(0, [][]byte{[]byte("h")}, time.Time{}, nil)
	if _, _, ok := c.LearnHash(w, 0, []byte("h"), [][]byte{[]byte("f"), []byte("v")}, t0.Add(time.Minute)); !ok {
		t.Error("LearnHash after Reset learnt nothing")
	}
	c.EndWrite(w)
}

// bs returns keys as the byte slices Lookup takes.
func bs(keys ...string) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = []byte(k)
	}
	return out
}

// TestHashCollisionsNeverShare files a stored reply and a flight of one
// read under the hash of another, as a collision would: the other read
// neither gets the reply nor joins the flight.
func TestHashCollisionsNeverShare(t *testing.T) {
	c := New(1<<20, 1<<10)
	_, _, f := c.Lookup(0, []byte("get|a"), bs("a"), time.Second, t0, nil)
	c.Finish(f, []byte("$1\r\na\r\n"), nil)
	c.Recycle(f)
	_, _, fa := c.Lookup(0, []byte("mget|a|x"), bs("a", "x"), time.Second, t0, nil)
	hb := c.readHash(0, []byte("get|b"))
	c.mu.Lock()
	e := c.entries[c.readHash(0, []byte("get|a"))]
	c.entries[hb], c.flights[hb] = e, fa
	c.mu.Unlock()
	hit, joined, fb := c.Lookup(0, []byte("get|b"), bs("b"), time.Second, t0, &reader{join: true})
	if hit != nil || joined || fb == nil {
		t.Fatalf("get|b shared get|a's reply (%q) or mget's flight (joined %v)", hit, joined)
	}
}

// TestRecycledFlightsKeepTheirReads runs random reads of 12 commands over
// 6 keys of different lengths, with joiners, writes and recycling interleaved at random, against
// a model: a flight fills the cache exactly when no write to its key came
// since it was led, a hit is always the reply last stored for that very
// read and is there while it is stored, and a flight returns only readers
// of its own read. A recycled
// flight that kept a previous read's key or command would break one.
func TestRecycledFlightsKeepTheirReads(t *testing.T) {
	c := New(1<<20, 1<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	type lead struct {
		f        *Flight
		cmd, key string
		writes   int // writes to the key's stripe when the read was led
	}
	var open []lead
	stored := map[string]string{}
	writes := map[uint32]int{} // by stripe: keys sharing one look written together
	stripe := func(k string) uint32 { return c.stripeIndex(0, []byte(k)) }
	for i := range 20000 {
		n := rng.IntN(6)
		k := fmt.Sprint(strings.Repeat("k", 1+n), n) // of different lengths
		cmd := fmt.Sprint("get|", k)
		if rng.IntN(2) == 0 {
			cmd = fmt.Sprint("strlen|", k)
		}
		switch rng.IntN(4) {
		case 0, 1:
			rd := &namedReader{cmd: cmd}
			hit, joined, f := c.Lookup(0, []byte(cmd), bs(k), time.Hour, t0, rd)
			if want, ok := stored[cmd]; string(hit) != want || ok != (hit != nil) {
				t.Fatalf("step %d: %s hit %q, stored %q", i, cmd, hit, want)
			}
			switch {
			case hit != nil:
			case !joined:
				rd.own = f
				open = append(open, lead{f, cmd, k, writes[stripe(k)]})
			}
		case 2:
			if len(open) == 0 {
				continue
			}
			j := rng.IntN(len(open))
			l := open[j]
			open = append(open[:j], open[j+1:]...)
			reply := fmt.Sprintf("+%s@%d\r\n", l.cmd, i)
			for _, w := range c.Finish(l.f, []byte(reply), nil) {
				if w.(*namedReader).cmd != l.cmd {
					t.Fatalf("step %d: %s's flight returned a reader of %s", i, l.cmd, w.(*namedReader).cmd)
				}
			}
			c.mu.Lock()
			e := c.entries[l.f.hash]
			c.mu.Unlock()
			filled := e != nil && e.cmd == l.cmd && string(e.reply) == reply
			if want := writes[stripe(l.key)] == l.writes; filled != want {
				t.Fatalf("step %d: %s filled %v, want %v (writes to %s's stripe since it was led: %d)", i, l.cmd, filled, want, l.key, writes[stripe(l.key)]-l.writes)
			}
			if filled {
				stored[l.cmd] = reply
			}
			c.Recycle(l.f)
		case 3:
			c.EndWrite(c.BeginWrite(0, bs(k), time.Time{}, nil))
			writes[stripe(k)]++
			delete(stored, "get|"+k)
			delete(stored, "strlen|"+k)
		}
	}
}

// namedReader is a Reader that joins whenever it may and remembers what
// it read and the flight it leads.
type namedReader struct {
	cmd string
	own *Flight
}

func (r *namedReader) MayHit() bool     { return true }
func (r *namedReader) CanJoin(any) bool { return true }
func (r *namedReader) Lead() any        { return r }
