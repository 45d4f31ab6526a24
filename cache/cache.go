// Package cache coalesces identical reads and keeps short-lived copies of
// read replies, invalidated by the writes funnel forwards.
//
// The contract, which every caller relies on:
//   - A write calls BeginWrite (or BeginWriteDB) before it is sent and
//     EndWrite once its reply (or its failure) is in, before the client
//     that sent it hears the reply. In between, its keys are pending.
//   - While a key is pending, no read of it is served from the cache, joins
//     a flight, or fills the cache.
//   - A reply is served only while it is younger than its TTL (counted from
//     when its read was sent) and younger than any expiry the writes seen
//     gave its keys, and only if no write to any of its keys began after
//     its read was sent.
//   - A read joins an identical flight only if no write to its keys began
//     or ended since that flight's read was sent.
//   - Error replies are never stored; values over the size limit are not
//     stored; total size is bounded, least recently used entries go first.
//
// So a client always reads its own writes, and reads never go back in time:
// a reply read before a write ended is never served after it ended.
//
// Writes funnel does not see (another client of the upstream, keys a Lua
// script touches without declaring them) are bounded only by the TTL.
package cache

import (
	"container/list"
	"hash/maphash"
	"sync"
	"time"
)

// Stats are the cache's counters.
type Stats struct {
	Hits, Misses, Joins, DroppedFills, Evictions int64
	Bytes, Entries                               int64
}

// stripes is how many write trackers keys hash into. A write marks its
// keys' stripes; a read checks its keys' stripes. Two keys that share a
// stripe only make each other look written more often than they are, which
// costs a cache fill now and then and never correctness.
const stripes = 4096

// stripe tracks the writes to the keys that hash to it.
type stripe struct {
	pending int32  // writes begun and not ended
	version uint64 // clock value of the last write begun or ended
	expires int64  // soonest expiry (unix ns) a write gave one of its keys; 0: none
}

// Cache is safe for concurrent use.
type Cache struct {
	maxBytes int64
	maxValue int
	seed     maphash.Seed

	mu        sync.Mutex
	clock     uint64                        // advances on every write begun or ended
	stripes   [stripes]stripe               // by hash of db and key
	dbEpoch   map[int]uint64                // last whole-db write begun or ended; -1: every db
	dbPending map[int]int32                 // whole-db writes pending
	keys      map[int]map[string]*keyState  // by db: keys with entries or flights
	entries   map[cmdKey]*entry             // stored replies
	flights   map[cmdKey]*Flight            // reads in flight that others may join
	lru       *list.List                    // of *entry, most recent first
	known     map[int]map[string]*hashKnown // by db: what hashes hold (see known.go)
	noExpiry  map[int]map[string]time.Time  // by db: keys seen to have no expiry, until when (see known.go)
	runs      map[runKey]*hashSetRun        // identical hash writes in flight together (see hashset.go)
	stats     Stats
}

type cmdKey struct {
	db  int
	cmd string
}

// keyState is what refers to a key: its entries and flights. A key with
// neither is forgotten.
type keyState struct {
	entries map[*entry]bool
	flights int
}

type entry struct {
	key     cmdKey
	keys    []string
	reply   []byte
	expires time.Time
	elem    *list.Element
}

// Flight is a read sent upstream that identical reads may join. The
// caller that started it must call Finish exactly once.
type Flight struct {
	key     cmdKey
	keys    []string
	start   uint64
	sent    time.Time // the TTL counts from here, when the read was sent
	ttl     time.Duration
	waiters []Reader
	// Owner is free for the caller: funnel keeps the upstream connection
	// the read went on, so a joiner's later commands follow it.
	Owner any
}

// New returns a cache holding at most maxBytes of replies, none larger than
// maxValue.
func New(maxBytes int64, maxValue int) *Cache {
	return &Cache{
		maxBytes: maxBytes, maxValue: maxValue, seed: maphash.MakeSeed(),
		dbEpoch: map[int]uint64{}, dbPending: map[int]int32{}, keys: map[int]map[string]*keyState{},
		entries: map[cmdKey]*entry{}, flights: map[cmdKey]*Flight{}, lru: list.New(),
		known: map[int]map[string]*hashKnown{}, noExpiry: map[int]map[string]time.Time{}, runs: map[runKey]*hashSetRun{},
	}
}

// Reader is the caller of Lookup: whether it may join a read in flight and
// how it leads a new one. Its methods run while the cache is locked and must
// not block.
type Reader interface {
	// MayHit reports whether a stored reply may answer the reader now.
	MayHit() bool
	// CanJoin reports whether the reader may join a flight whose Owner is
	// owner; when it returns true the reader counts as joined.
	CanJoin(owner any) bool
	// Lead is called when the reader leads a new flight; it returns the
	// flight's Owner, which joiners see.
	Lead() any
}

func (c *Cache) stripeOfString(db int, key string) *stripe {
	h := maphash.String(c.seed, key) ^ uint64(db)*0x9e3779b97f4a7c15
	return &c.stripes[h%stripes]
}

func (c *Cache) stripeIndex(db int, key []byte) uint32 {
	h := maphash.Bytes(c.seed, key) ^ uint64(db)*0x9e3779b97f4a7c15
	return uint32(h % stripes)
}

// Lookup is called before a read of keys is sent. With ttl > 0 a fresh
// stored reply is returned as hit. Otherwise, if an identical read is in
// flight, still valid, and rd may join it, joined is true, and rd is among
// the readers that Finish returns. Otherwise rd leads a new flight: it sends
// the read and calls Finish with the outcome.
func (c *Cache) Lookup(db int, cmd string, keys []string, ttl time.Duration, now time.Time, rd Reader) (hit []byte, joined bool, lead *Flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := cmdKey{db, cmd}
	if e := c.entries[k]; e != nil {
		switch {
		case ttl <= 0 || !now.Before(e.expires):
			c.removeEntry(e)
		case rd == nil || rd.MayHit():
			c.lru.MoveToFront(e.elem)
			c.stats.Hits++
			return e.reply, false, nil
		}
	}
	if f := c.flights[k]; f != nil && rd != nil && c.validSince(db, f.keys, f.start) && rd.CanJoin(f.Owner) {
		f.waiters = append(f.waiters, rd)
		c.stats.Joins++
		return nil, true, nil
	}
	c.stats.Misses++
	f := &Flight{key: k, keys: keys, start: c.clock, sent: now, ttl: ttl}
	if rd != nil {
		f.Owner = rd.Lead()
	}
	// A read of a pending key must not be joined: it may overtake the
	// write on another connection. It still goes upstream, on its own.
	if c.validSince(db, keys, f.start) {
		c.flights[k] = f
	}
	for _, key := range keys {
		c.track(db, key).flights++
	}
	return nil, false, f
}

// Finish ends a flight and returns the readers that joined it, for the
// caller to give them the outcome. A reply that may be kept is stored,
// unless a write to one of its keys began since the read was sent or is
// still pending. The entry expires one TTL after the read was sent, not
// after its reply came: the upstream may have run it any time in between,
// so this is the bound that never lets data older than the TTL be served;
// and no later than an expiry that a write seen gave one of its keys.
func (c *Cache) Finish(f *Flight, reply []byte, err error) []Reader {
	c.mu.Lock()
	if c.flights[f.key] == f {
		delete(c.flights, f.key)
	}
	db := f.key.db
	for _, key := range f.keys {
		if ks := c.keys[db][key]; ks != nil {
			ks.flights--
		}
	}
	storable := err == nil && f.ttl > 0 && len(reply) > 0 && reply[0] != '-' && reply[0] != '!' && len(reply) <= c.maxValue
	if storable {
		if c.validSince(db, f.keys, f.start) {
			c.store(f, reply)
		} else {
			c.stats.DroppedFills++
		}
	}
	for _, key := range f.keys {
		c.forgetIfUnused(db, key)
	}
	waiters := f.waiters
	f.waiters = nil
	c.mu.Unlock()
	return waiters
}

// validSince reports whether none of keys (nor their db) was written after
// clock value start, and none is pending now. mu must be held.
func (c *Cache) validSince(db int, keys []string, start uint64) bool {
	if c.dbEpoch[db] > start || c.dbEpoch[-1] > start || c.dbPending[db] > 0 || c.dbPending[-1] > 0 {
		return false
	}
	for _, key := range keys {
		if st := c.stripeOfString(db, key); st.pending > 0 || st.version > start {
			return false
		}
	}
	return true
}

func (c *Cache) store(f *Flight, reply []byte) {
	if old := c.entries[f.key]; old != nil {
		c.removeEntry(old)
	}
	expires := f.sent.Add(f.ttl)
	for _, key := range f.keys {
		// A key that a write gave an expiry before this read was sent: the
		// reply may not outlive it.
		if st := c.stripeOfString(f.key.db, key); st.expires > f.sent.UnixNano() && st.expires < expires.UnixNano() {
			expires = time.Unix(0, st.expires)
		}
	}
	e := &entry{key: f.key, keys: f.keys, reply: append([]byte(nil), reply...), expires: expires}
	e.elem = c.lru.PushFront(e)
	c.entries[f.key] = e
	for _, key := range f.keys {
		c.track(f.key.db, key).entries[e] = true
	}
	c.stats.Entries++
	c.stats.Bytes += e.size()
	for c.stats.Bytes > c.maxBytes && c.lru.Len() > 0 {
		c.removeEntry(c.lru.Back().Value.(*entry))
		c.stats.Evictions++
	}
}

func (e *entry) size() int64 { return int64(len(e.reply) + len(e.key.cmd) + 64) }

// removeEntry drops e. mu must be held.
func (c *Cache) removeEntry(e *entry) {
	if c.entries[e.key] != e {
		return
	}
	delete(c.entries, e.key)
	c.lru.Remove(e.elem)
	c.stats.Entries--
	c.stats.Bytes -= e.size()
	for _, key := range e.keys {
		if ks := c.keys[e.key.db][key]; ks != nil {
			delete(ks.entries, e)
			c.forgetIfUnused(e.key.db, key)
		}
	}
}

func (c *Cache) track(db int, key string) *keyState {
	byKey := c.keys[db]
	if byKey == nil {
		byKey = map[string]*keyState{}
		c.keys[db] = byKey
	}
	ks := byKey[key]
	if ks == nil {
		ks = &keyState{entries: map[*entry]bool{}}
		byKey[key] = ks
	}
	return ks
}

func (c *Cache) forgetIfUnused(db int, key string) {
	if ks := c.keys[db][key]; ks != nil && ks.flights <= 0 && len(ks.entries) == 0 {
		delete(c.keys[db], key)
	}
}

// Write is a write that began: its keys stay pending until EndWrite.
type Write struct {
	db      int
	whole   bool        // the write's keys are unknown: all of db (or every db, -1) is pending
	stripes []uint32    // the stripes of its keys
	began   uint64      // the clock when it began
	run     *hashSetRun // the run of identical hash writes it is part of (BeginHashSet)
}

// BeginWrite records a write to keys of db, about to be sent: replies of
// those keys are dropped, and until EndWrite no read of them is served,
// joined or stored. expires, when not zero, is the soonest the write may
// make its keys expire (SET ... PX, EXPIRE ...). stripes is storage the
// Write may keep, so that a write allocates nothing.
func (c *Cache) BeginWrite(db int, keys [][]byte, expires time.Time, stripes []uint32) Write {
	return c.beginWrite(db, keys, expires, stripes, true)
}

// BeginWriteKeepingTTL is BeginWrite for a write that cannot give its keys
// an expiry (HSET, LPUSH, DEL ...): what funnel knew of the keys' values is
// forgotten, but not that they have no expiry (see ConfirmNoExpiry).
func (c *Cache) BeginWriteKeepingTTL(db int, keys [][]byte, stripes []uint32) Write {
	return c.beginWrite(db, keys, time.Time{}, stripes, false)
}

func (c *Cache) beginWrite(db int, keys [][]byte, expires time.Time, stripes []uint32, mayExpire bool) Write {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, key := range keys {
		c.forgetKnown(db, key)
		c.spoilRun(db, key)
		if mayExpire {
			c.forgetNoExpiry(db, key)
		}
	}
	return c.beginWriteLocked(db, keys, expires, stripes)
}

// beginWriteLocked marks keys pending and drops their replies; mu must be
// held. What is known of the keys is the caller's to forget.
func (c *Cache) beginWriteLocked(db int, keys [][]byte, expires time.Time, stripes []uint32) Write {
	w := Write{db: db, stripes: stripes[:0]}
	c.clock++
	w.began = c.clock
	byKey := c.keys[db]
	for _, key := range keys {
		i := c.stripeIndex(db, key)
		w.stripes = append(w.stripes, i)
		st := &c.stripes[i]
		st.pending++
		st.version = c.clock
		if !expires.IsZero() {
			ns := expires.UnixNano()
			if st.expires <= time.Now().UnixNano() || ns < st.expires {
				st.expires = ns
			}
		}
		ks := byKey[string(key)] // no allocation: the lookup does not copy
		if ks == nil {
			continue // nothing cached or in flight refers to it
		}
		for e := range ks.entries {
			c.removeEntry(e)
		}
	}
	return w
}

// BeginWriteDB records a write to unknown keys of db (FLUSHDB, an unknown
// command); db -1 means every db (FLUSHALL, SWAPDB).
func (c *Cache) BeginWriteDB(db int) Write {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	c.dbEpoch[db] = c.clock
	c.dbPending[db]++
	c.forgetKnown(db, nil)
	c.forgetNoExpiry(db, nil)
	c.spoilRuns(db)
	for k, e := range c.entries {
		if db == -1 || k.db == db {
			c.removeEntry(e)
		}
	}
	return Write{db: db, whole: true}
}

// EndWrite records that w's reply, or its failure, is in: its keys are no
// longer pending, and no read sent before now fills or is joined.
func (c *Cache) EndWrite(w Write) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	if w.whole {
		c.dbEpoch[w.db] = c.clock
		if c.dbPending[w.db]--; c.dbPending[w.db] <= 0 {
			delete(c.dbPending, w.db)
		}
		return
	}
	for _, i := range w.stripes {
		st := &c.stripes[i]
		st.pending--
		st.version = c.clock
	}
	if w.run != nil {
		c.endRun(w.run)
	}
}

// Reset drops every stored reply and all that is known of hashes, and
// keeps every read in flight from filling the cache or being joined, as a
// FLUSHALL that began and ended at once would: a reply read before Reset
// is never served after it. Writes pending stay pending. It is for a
// change of the rules that decided what was stored (a TTL, an absorb
// window): nothing stored or learnt under the old rules outlives them.
func (c *Cache) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	c.dbEpoch[-1] = c.clock
	clear(c.known)
	clear(c.noExpiry)
	c.spoilRuns(-1)
	for _, e := range c.entries {
		c.removeEntry(e) // deleting while ranging over a map is allowed
	}
}

// KnownExpiry returns the soonest expiry writes seen gave key in db, or the
// zero time. RENAME and COPY pass it on to their destination.
func (c *Cache) KnownExpiry(db int, key []byte) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &c.stripes[c.stripeIndex(db, key)]
	if st.expires <= time.Now().UnixNano() {
		return time.Time{}
	}
	return time.Unix(0, st.expires)
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Stripes returns the storage the write keeps, for the caller to reuse.
func (w Write) Stripes() []uint32 { return w.stripes }
