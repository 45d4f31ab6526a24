package cache

import (
	"testing"
	"time"
)

// TestHashSetRuns: identical HSETs of a key in flight together teach what
// the hash holds, and more of them may be absorbed meanwhile, unless
// another write to the key (or its db) was in flight or began during the
// run; a different HSET, a write to the key and a whole-db write each
// spoil it. Each case counts as learnt only with confirmation, as funnel
// uses it.
func TestHashSetRuns(t *testing.T) {
	h := []byte("meta")
	pairs := [][]byte{[]byte("a"), []byte("1"), []byte("b"), []byte("2")}
	other := [][]byte{[]byte("a"), []byte("9")}
	until := time.Now().Add(time.Minute)
	learn := func(c *Cache, w Write) bool {
		gen, _, ok := c.LearnHash(w, 0, h, pairs, until)
		if ok {
			c.ConfirmNoExpiry(0, h, gen, until)
		}
		return ok
	}
	cases := []struct {
		name      string
		between   func(c *Cache) // runs while two identical HSETs are in flight
		wantLearn bool
	}{
		{"a clean run", func(*Cache) {}, true},
		{"another key's write", func(c *Cache) { c.EndWrite(c.BeginWrite(0, [][]byte{[]byte("other")}, time.Time{}, nil)) }, true},
		{"a write to the key", func(c *Cache) { c.EndWrite(c.BeginWrite(0, [][]byte{h}, time.Time{}, nil)) }, false},
		{"a different HSET", func(c *Cache) { c.EndWrite(c.BeginHashSet(0, h, other, nil)) }, false},
		{"a whole-db write", func(c *Cache) { c.EndWrite(c.BeginWriteDB(0)) }, false},
		{"a Reset", func(c *Cache) { c.Reset() }, false},
	}
	for _, tc := range cases {
		c := New(1<<20, 1<<10)
		w1 := c.BeginHashSet(0, h, pairs, nil)
		w2 := c.BeginHashSet(0, h, pairs, nil)
		tc.between(c)
		got := learn(c, w1)
		c.EndWrite(w1)
		if got != tc.wantLearn {
			t.Errorf("%s: learnt %v from the first of two identical HSETs, want %v", tc.name, got, tc.wantLearn)
		}
		// While the second is in flight, the same HSET may be absorbed only
		// from a clean run.
		if holds := c.HashHolds(0, h, pairs, time.Now()); holds != tc.wantLearn {
			t.Errorf("%s: with an identical HSET in flight, HashHolds %v, want %v", tc.name, holds, tc.wantLearn)
		}
		c.EndWrite(w2)
		if len(c.runs) != 0 {
			t.Errorf("%s: %d runs left after their writes ended", tc.name, len(c.runs))
		}
	}

	// A run that began while another write to the key was in flight is
	// spoilt from the start: that write may land between its HSETs.
	c := New(1<<20, 1<<10)
	del := c.BeginWrite(0, [][]byte{h}, time.Time{}, nil)
	w1 := c.BeginHashSet(0, h, pairs, nil)
	w2 := c.BeginHashSet(0, h, pairs, nil)
	c.EndWrite(del)
	if learn(c, w1) {
		t.Error("learnt from a run that began while another write to the key was in flight")
	}
	c.EndWrite(w1)
	c.EndWrite(w2)

	// Knowledge survives an identical HSET, and a different one forgets it.
	c = New(1<<20, 1<<10)
	w := c.BeginHashSet(0, h, pairs, nil)
	if !learn(c, w) {
		t.Fatal("a lone HSET taught nothing")
	}
	c.EndWrite(w)
	c.EndWrite(c.BeginHashSet(0, h, pairs, nil))
	if !c.HashHolds(0, h, pairs, time.Now()) {
		t.Error("an identical HSET made funnel forget the hash")
	}
	c.EndWrite(c.BeginHashSet(0, h, other, nil))
	if c.HashHolds(0, h, pairs, time.Now()) {
		t.Error("an HSET of other values left the hash known")
	}
}
