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
	keys      map[int]map[string]*keyState  // by db: keys with entries
	entries   map[uint64]*entry             // stored replies, by readHash
	flights   map[uint64]*Flight            // reads in flight that others may join, by readHash
	spare     []*Flight                     // finished flights, for reuse
	lru       *list.List                    // of *entry, most recent first
	known     map[int]map[string]*hashKnown // by db: what hashes hold (see known.go)
	noExpiry  map[int]map[string]time.Time  // by db: keys seen to have no expiry, until when (see known.go)
	runs      map[runKey]*hashSetRun        // identical hash writes in flight together (see hashset.go)
	stats     Stats
}

// keyState is what refers to a key: its entries. A key with none is
// forgotten. (Flights need no record per key: whether a write came is
// told by the keys' stripes.)
type keyState struct {
	entries map[*entry]bool
}

// Entries and flights are found by a hash of their db and read; the read
// itself, kept with them, is compared before one is used, so two reads
// whose hashes collide only miss each other.
type entry struct {
	hash    uint64
	db      int
	cmd     string
	keys    []string
	reply   []byte
	expires time.Time
	elem    *list.Element
}

// Flight is a read sent upstream that identical reads may join. The
// caller that started it must call Finish exactly once, then Recycle once
// it is done with the readers Finish returned, and not touch the flight
// after: it is reused, so leading a read allocates nothing.
type Flight struct {
	hash    uint64
	db      int
	cmd     []byte   // the read, for the comparison
	keyBuf  []byte   // storage of keys
	keys    [][]byte // views into keyBuf
	start   uint64
	sent    time.Time // the TTL counts from here, when the read was sent
	ttl     time.Duration
	waiters []Reader
	// Owner is free for the caller: funnel keeps the upstream connection
	// the read went on, so a joiner's later commands follow it.
	Owner any
}

// maxSpareFlights bounds the finished flights kept for reuse.
const maxSpareFlights = 256

func (f *Flight) is(db int, cmd []byte) bool { return f.db == db && string(f.cmd) == string(cmd) }

func (e *entry) is(db int, cmd []byte) bool { return e.db == db && e.cmd == string(cmd) }

// setKeys copies keys into f's own storage.
func (f *Flight) setKeys(keys [][]byte) {
	n := 0
	for _, k := range keys {
		n += len(k)
	}
	if cap(f.keyBuf) < n {
		f.keyBuf = make([]byte, 0, n)
	}
	f.keyBuf, f.keys = f.keyBuf[:0], f.keys[:0]
	for _, k := range keys {
		i := len(f.keyBuf)
		f.keyBuf = append(f.keyBuf, k...)
		f.keys = append(f.keys, f.keyBuf[i:len(f.keyBuf):len(f.keyBuf)])
	}
}

// readHash is where the read cmd of db is filed.
func (c *Cache) readHash(db int, cmd []byte) uint64 {
	return maphash.Bytes(c.seed, cmd) ^ uint64(db)*0x9e3779b97f4a7c15
}

// New returns a cache holding at most maxBytes of replies, none larger than
// maxValue.
func New(maxBytes int64, maxValue int) *Cache {
	return &Cache{
		maxBytes: maxBytes, maxValue: maxValue, seed: maphash.MakeSeed(),
		dbEpoch: map[int]uint64{}, dbPending: map[int]int32{}, keys: map[int]map[string]*keyState{},
		entries: map[uint64]*entry{}, flights: map[uint64]*Flight{}, lru: list.New(),
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

func (c *Cache) stripeIndex(db int, key []byte) uint32 {
	h := maphash.Bytes(c.seed, key) ^ uint64(db)*0x9e3779b97f4a7c15
	return uint32(h % stripes)
}

// Lookup is called before a read of keys is sent. With ttl > 0 a fresh
// stored reply is returned as hit. Otherwise, if an identical read is in
// flight, still valid, and rd may join it, joined is true, and rd is among
// the readers that Finish returns. Otherwise rd leads a new flight: it sends
// the read and calls Finish with the outcome.
func (c *Cache) Lookup(db int, cmd []byte, keys [][]byte, ttl time.Duration, now time.Time, rd Reader) (hit []byte, joined bool, lead *Flight) {
	h := c.readHash(db, cmd)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[h]; e != nil && e.is(db, cmd) {
		switch {
		case ttl <= 0 || !now.Before(e.expires):
			c.removeEntry(e)
		case rd == nil || rd.MayHit():
			c.lru.MoveToFront(e.elem)
			c.stats.Hits++
			return e.reply, false, nil
		}
	}
	if f := c.flights[h]; f != nil && rd != nil && f.is(db, cmd) && c.validSince(db, f.keys, f.start) && rd.CanJoin(f.Owner) {
		f.waiters = append(f.waiters, rd)
		c.stats.Joins++
		return nil, true, nil
	}
	c.stats.Misses++
	var f *Flight
	if n := len(c.spare); n > 0 {
		f, c.spare = c.spare[n-1], c.spare[:n-1]
	} else {
		f = new(Flight)
	}
	f.hash, f.db, f.cmd = h, db, append(f.cmd[:0], cmd...)
	f.setKeys(keys)
	f.start, f.sent, f.ttl = c.clock, now, ttl
	if rd != nil {
		f.Owner = rd.Lead()
	}
	// A read of a pending key must not be joined: it may overtake the
	// write on another connection. It still goes upstream, on its own.
	if c.validSince(db, f.keys, f.start) {
		c.flights[h] = f
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
	defer c.mu.Unlock()
	if c.flights[f.hash] == f {
		delete(c.flights, f.hash)
	}
	storable := err == nil && f.ttl > 0 && len(reply) > 0 && reply[0] != '-' && reply[0] != '!' && len(reply) <= c.maxValue
	if storable {
		if c.validSince(f.db, f.keys, f.start) {
			c.store(f, reply)
		} else {
			c.stats.DroppedFills++
		}
	}
	return f.waiters
}

// Recycle takes back a finished flight, and the readers Finish returned.
func (c *Cache) Recycle(f *Flight) {
	clear(f.waiters)
	f.waiters, f.Owner = f.waiters[:0], nil
	c.mu.Lock()
	if len(c.spare) < maxSpareFlights && cap(f.cmd) <= 4<<10 && cap(f.keyBuf) <= 4<<10 && cap(f.waiters) <= 1024 {
		c.spare = append(c.spare, f)
	}
	c.mu.Unlock()
}

// validSince reports whether none of keys (nor their db) was written after
// clock value start, and none is pending now. mu must be held.
func (c *Cache) validSince(db int, keys [][]byte, start uint64) bool {
	if c.dbEpoch[db] > start || c.dbEpoch[-1] > start || c.dbPending[db] > 0 || c.dbPending[-1] > 0 {
		return false
	}
	for _, key := range keys {
		if st := &c.stripes[c.stripeIndex(db, key)]; st.pending > 0 || st.version > start {
			return false
		}
	}
	return true
}

func (c *Cache) store(f *Flight, reply []byte) {
	if old := c.entries[f.hash]; old != nil {
		c.removeEntry(old)
	}
	expires := f.sent.Add(f.ttl)
	keys := make([]string, len(f.keys))
	for i, key := range f.keys {
		keys[i] = string(key)
		// A key that a write gave an expiry before this read was sent: the
		// reply may not outlive it.
		if st := &c.stripes[c.stripeIndex(f.db, key)]; st.expires > f.sent.UnixNano() && st.expires < expires.UnixNano() {
			expires = time.Unix(0, st.expires)
		}
	}
	e := &entry{hash: f.hash, db: f.db, cmd: string(f.cmd), keys: keys, reply: append([]byte(nil), reply...), expires: expires}
	e.elem = c.lru.PushFront(e)
	c.entries[f.hash] = e
	for _, key := range keys {
		c.track(f.db, key).entries[e] = true
	}
	c.stats.Entries++
	c.stats.Bytes += e.size()
	for c.stats.Bytes > c.maxBytes && c.lru.Len() > 0 {
		c.removeEntry(c.lru.Back().Value.(*entry))
		c.stats.Evictions++
	}
}

func (e *entry) size() int64 { return int64(len(e.reply) + len(e.cmd) + 64) }

// removeEntry drops e. mu must be held.
func (c *Cache) removeEntry(e *entry) {
	if c.entries[e.hash] != e {
		return
	}
	delete(c.entries, e.hash)
	c.lru.Remove(e.elem)
	c.stats.Entries--
	c.stats.Bytes -= e.size()
	for _, key := range e.keys {
		if ks := c.keys[e.db][key]; ks != nil {
			delete(ks.entries, e)
			c.forgetIfUnused(e.db, key)
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
	if ks := c.keys[db][key]; ks != nil && len(ks.entries) == 0 {
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
	for _, e := range c.entries {
		if db == -1 || e.db == db {
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
