package cache

import "time"

// Known field values of hashes, for absorbing idempotent writes: an HSET of
// fields a hash is known to hold already, with the same values, is
// answered without sending it (see proxy's absorb rules). What funnel knows
// comes from a write of those fields it forwarded and saw succeed; any
// write to the key that begins after (any command that may write it, DEL
// and EXPIRE included) forgets it, as does the end of the rule's window.
// Knowledge counts only once confirmed: funnel asked, after the write, and
// the key had no expiry (an expiry funnel did not see could make the hash
// vanish while funnel still answers for it). That the key has no expiry is
// remembered apart, for the rule's window from the asking: writes that
// cannot give a key an expiry (BeginWriteKeepingTTL) forget the values but
// not that, so learning the values again needs no new question. Writes
// that may (EXPIRE, SET ... PX, RENAME, a script funnel cannot follow ...),
// whole-db writes and Reset forget it too. An expiry set from elsewhere
// within the window is not seen, like any write from elsewhere.

type hashKnown struct {
	fields    map[string]string
	until     time.Time // the rule's window ends
	confirmed bool      // the key was seen to have no expiry since it was learnt
	gen       uint64    // tells one learning from the next, for Confirm
}

// LearnHash records, as w (a write of pairs, field then value, to key of
// db) ends with success, that the hash holds those values, until until.
// It must be called just before EndWrite(w). It learns nothing when another
// write to the key (or to a key that shares its tracker, or to its whole
// db) began or ended since w began, or the cache was Reset: then the
// values might not be the last ones, or the rules changed. It returns
// what Confirm needs.
//
// confirmed reports that the key is known to have no expiry already, so
// the values count at once and ConfirmNoExpiry is not needed.
func (c *Cache) LearnHash(w Write, db int, key []byte, pairs [][]byte, until time.Time) (gen uint64, confirmed, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &c.stripes[c.stripeIndex(db, key)]
	// Another write begun or ended since w began (unless all are the same
	// HSET as w: a clean run, see hashset.go), or a whole-db write
	// (FLUSHDB, FLUSHALL) or a Reset, may have come after w upstream, or
	// changed the rules: learn nothing.
	alone := !w.whole && st.pending == 1 && st.version == w.began
	if !(alone || c.cleanRun(w, st)) || c.dbPending[db] > 0 || c.dbPending[-1] > 0 ||
		c.dbEpoch[db] > w.began || c.dbEpoch[-1] > w.began {
		return 0, false, false
	}
	byKey := c.known[db]
	if byKey == nil {
		if len(c.known) >= 64 {
			return 0, false, false
		}
		byKey = map[string]*hashKnown{}
		c.known[db] = byKey
	}
	if hk := byKey[string(key)]; hk != nil && len(hk.fields) == len(pairs)/2 && c.holdsLocked(db, key, pairs) {
		// The same values again (a run of identical HSETs): keep the
		// learning, so an expiry check in flight for it still counts, and
		// restart its window; it stays confirmed only while the key is
		// remembered to have no expiry.
		hk.until = until
		hk.confirmed = c.noExpiryUntil(db, key)
		return hk.gen, hk.confirmed, true
	}
	if len(byKey) >= maxKnownHashes {
		return 0, false, false
	}
	c.clock++
	hk := &hashKnown{fields: make(map[string]string, len(pairs)/2), until: until, gen: c.clock}
	for i := 0; i+1 < len(pairs); i += 2 {
		hk.fields[string(pairs[i])] = string(pairs[i+1])
	}
	hk.confirmed = c.noExpiryUntil(db, key)
	byKey[string(key)] = hk
	return hk.gen, hk.confirmed, true
}

// maxKnownHashes bounds the hashes known per db; absorb rules name a few
// keys (BullMQ's meta hash per queue).
const maxKnownHashes = 10000

// ConfirmNoExpiry records that the key, learnt as gen, had no expiry when
// funnel asked after learning it.
// Nothing written to the key since it was learnt (the same gen), it is
// remembered to have no expiry until until (see the file's comment).
func (c *Cache) ConfirmNoExpiry(db int, key []byte, gen uint64, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hk := c.known[db][string(key)]
	if hk == nil || hk.gen != gen {
		return
	}
	hk.confirmed = true
	byKey := c.noExpiry[db]
	if byKey == nil {
		if len(c.noExpiry) >= 64 {
			return
		}
		byKey = map[string]time.Time{}
		c.noExpiry[db] = byKey
	}
	if len(byKey) < maxKnownHashes {
		byKey[string(key)] = until
	}
}

// HashHolds reports whether the hash at key of db is known to hold every
// field of pairs with the value pairs gives it, now: learnt and confirmed,
// within its window, with no write to the key pending and no expiry funnel
// saw given to it.
func (c *Cache) HashHolds(db int, key []byte, pairs [][]byte, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	hk := c.known[db][string(key)]
	if hk == nil || !hk.confirmed || !now.Before(hk.until) {
		return false
	}
	st := &c.stripes[c.stripeIndex(db, key)]
	// Writes in flight are allowed only when they are a clean run of one
	// HSET, which set values funnel knows (BeginHashSet forgets them
	// otherwise).
	if run := c.runs[runKey{db, string(key)}]; st.pending > 0 && (run == nil || !run.clean || st.pending != run.inflight) {
		return false
	}
	if st.expires != 0 || c.dbPending[db] > 0 || c.dbPending[-1] > 0 {
		return false
	}
	return c.holdsLocked(db, key, pairs)
}

// holdsLocked reports whether what is known of the hash at key of db gives
// every field of pairs the value pairs gives it. mu must be held.
func (c *Cache) holdsLocked(db int, key []byte, pairs [][]byte) bool {
	hk := c.known[db][string(key)]
	if hk == nil {
		return false
	}
	for i := 0; i+1 < len(pairs); i += 2 {
		v, ok := hk.fields[string(pairs[i])]
		if !ok || v != string(pairs[i+1]) {
			return false
		}
	}
	return true
}

// forgetKnown drops what is known of key in db (db -1: of every db; key
// nil: of every key). mu must be held.
func (c *Cache) forgetKnown(db int, key []byte) { forget(c.known, db, key) }

// forgetNoExpiry drops that key of db is known to have no expiry (db -1:
// of every db; key nil: of every key). mu must be held.
func (c *Cache) forgetNoExpiry(db int, key []byte) { forget(c.noExpiry, db, key) }

// forget deletes key of db from a by-db map of facts about keys (db -1:
// every db; key nil: every key of db).
func forget[V any](m map[int]map[string]V, db int, key []byte) {
	switch {
	case db == -1:
		clear(m)
	case key == nil:
		delete(m, db)
	default:
		if byKey := m[db]; byKey != nil {
			delete(byKey, string(key))
		}
	}
}

// noExpiryUntil reports whether key of db is remembered to have no expiry
// now. mu must be held.
func (c *Cache) noExpiryUntil(db int, key []byte) bool {
	t, ok := c.noExpiry[db][string(key)]
	return ok && time.Now().Before(t)
}
