package cache

import (
	"strconv"
	"time"
)

// Runs of identical hash writes. Absorbing learns what a hash holds from an
// HSET that succeeded with no other write to the key in flight: otherwise
// the other might have run after it upstream. That rule is stricter than it
// needs to be when the others are the same HSET: many new BullMQ Queues at
// once, or a loaded machine, send identical HSETs of the queue's meta hash
// that overlap, and each leaves the hash holding the same values, in any
// order. A run is such a set of identical writes (same key, same field and
// value pairs) in flight together; it stays clean while no other write to
// the key, or to its whole db, was in flight or began during it. From a
// clean run funnel may learn, and may absorb more of the same, as if each
// write ran alone.

// runKey names a run: a key of a db.
type runKey struct {
	db  int
	key string
}

// hashSetRun is identical HSETs of one key in flight together.
type hashSetRun struct {
	key      runKey
	sig      string // the pairs the writes set
	inflight int32
	clean    bool // no other write to the key was in flight or began during the run
}

// maxRuns bounds the runs tracked at once; past it a write is on its own.
const maxRuns = 10000

// BeginHashSet is BeginWrite for an HSET or HMSET of pairs (field, value,
// ...) to key of db, whose success the caller may learn from (LearnHash).
// Such a write cannot give the key an expiry, and what funnel knows of the
// hash stays known when the write sets the same values.
func (c *Cache) BeginHashSet(db int, key []byte, pairs [][]byte, stripes []uint32) Write {
	sig := pairSig(pairs)
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &c.stripes[c.stripeIndex(db, key)]
	rk := runKey{db, string(key)}
	run := c.runs[rk]
	switch {
	case run == nil && len(c.runs) < maxRuns:
		run = &hashSetRun{key: rk, sig: sig, clean: st.pending == 0 && c.dbPending[db] == 0 && c.dbPending[-1] == 0}
		c.runs[rk] = run
	case run == nil:
	case run.sig == sig:
		if st.pending > run.inflight {
			run.clean = false // another write of the stripe is in flight: maybe to this key
		}
	default:
		run.clean = false // another write to the key
		run = nil
	}
	if !c.holdsLocked(db, key, pairs) {
		c.forgetKnown(db, key)
	}
	w := c.beginWriteLocked(db, [][]byte{key}, time.Time{}, stripes)
	if run != nil {
		run.inflight++
		w.run = run
	}
	return w
}

// spoilRun marks the run of key, if any, as met by another write. mu must
// be held.
func (c *Cache) spoilRun(db int, key []byte) {
	if len(c.runs) == 0 {
		return // the common case: no map lookup, no hash of key
	}
	if run := c.runs[runKey{db, string(key)}]; run != nil {
		run.clean = false
	}
}

// spoilRuns spoils every run of db (-1: of every db). mu must be held.
func (c *Cache) spoilRuns(db int) {
	for k, run := range c.runs {
		if db == -1 || k.db == db {
			run.clean = false
		}
	}
}

// endRun counts a write of run as ended. mu must be held.
func (c *Cache) endRun(run *hashSetRun) {
	if run.inflight--; run.inflight <= 0 && c.runs[run.key] == run {
		delete(c.runs, run.key)
	}
}

// cleanRun reports whether w is part of a clean run and every write of its
// stripe in flight is of that run. mu must be held.
func (c *Cache) cleanRun(w Write, st *stripe) bool {
	return w.run != nil && w.run.clean && st.pending == w.run.inflight
}

// pairSig encodes field and value pairs, so that two writes compare.
func pairSig(pairs [][]byte) string {
	var b []byte
	for _, p := range pairs {
		b = strconv.AppendInt(b, int64(len(p)), 10)
		b = append(append(b, ':'), p...)
	}
	return string(b)
}
