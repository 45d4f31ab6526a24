// Package cache coalesces identical reads and keeps short-lived copies of
// read replies, invalidated by the writes funnel forwards.
//
// The contract, which every caller relies on:
//   - A reply is served from the cache only while it is younger than its TTL,
//     and only if no write to any of its keys was sent after the read that
//     filled it was sent.
//   - A read joins an in-flight identical read only if no write to its keys
//     was sent since that read was sent.
//   - Writes call Invalidate (or InvalidateDB/InvalidateAll) before they are
//     sent upstream; that is what the two rules above are measured against.
//   - Error replies are never stored; values over the size limit are not
//     stored; total size is bounded, least recently used entries go first.
//
// Writes funnel does not see (another client of the upstream, keys a Lua
// script touches without declaring them) are bounded only by the TTL.
package cache

import (
	"container/list"
	"sync"
	"time"
)

// Stats are the cache's counters.
type Stats struct {
	Hits, Misses, Joins, DroppedFills, Evictions int64
	Bytes, Entries                               int64
}

// Cache is safe for concurrent use.
type Cache struct {
	maxBytes int64
	maxValue int

	mu      sync.Mutex
	clock   uint64                       // advances on every invalidation
	dbEpoch map[int]uint64               // last whole-db invalidation
	keys    map[int]map[string]*keyState // by db: keys with entries or flights
	entries map[cmdKey]*entry            // stored replies
	flights map[cmdKey]*Flight           // reads in flight that others may join
	lru     *list.List                   // of *entry, most recent first
	stats   Stats
}

type cmdKey struct {
	db  int
	cmd string
}

// keyState is what the cache tracks per key: when it was last written and
// what refers to it. A key with no entries and no flights is forgotten.
type keyState struct {
	lastWrite uint64
	entries   map[*entry]bool
	flights   int
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
		maxBytes: maxBytes, maxValue: maxValue,
		dbEpoch: map[int]uint64{}, keys: map[int]map[string]*keyState{},
		entries: map[cmdKey]*entry{}, flights: map[cmdKey]*Flight{}, lru: list.New(),
	}
}

// Reader is the caller of Lookup: whether it may join a read in flight and
// how it leads a new one. Its methods run while the cache is locked and must
// not block.
type Reader interface {
	// CanJoin reports whether the reader may join a flight whose Owner is
	// owner; when it returns true the reader counts as joined.
	CanJoin(owner any) bool
	// Lead is called when the reader leads a new flight; it returns the
	// flight's Owner, which joiners see.
	Lead() any
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
		if ttl > 0 && now.Before(e.expires) {
			c.lru.MoveToFront(e.elem)
			c.stats.Hits++
			return e.reply, false, nil
		}
		c.removeEntry(e)
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
	c.flights[k] = f
	for _, key := range keys {
		c.track(db, key).flights++
	}
	return nil, false, f
}

// Finish ends a flight and returns the readers that joined it, for the
// caller to give them the outcome. A reply that may be kept is stored, unless a write to one of its keys was sent meanwhile. The
// entry expires one TTL after the read was sent, not after its reply came:
// the upstream may have run it any time in between, so this is the bound
// that never lets data older than the TTL be served.
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
	storable := err == nil && f.ttl > 0 && len(reply) > 0 && reply[0] != '-' && len(reply) <= c.maxValue
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
// clock value start. mu must be held.
func (c *Cache) validSince(db int, keys []string, start uint64) bool {
	if c.dbEpoch[db] > start || c.dbEpoch[-1] > start {
		return false
	}
	for _, key := range keys {
		if ks := c.keys[db][key]; ks != nil && ks.lastWrite > start {
			return false
		}
	}
	return true
}

func (c *Cache) store(f *Flight, reply []byte) {
	if old := c.entries[f.key]; old != nil {
		c.removeEntry(old)
	}
	e := &entry{key: f.key, keys: f.keys, reply: append([]byte(nil), reply...), expires: f.sent.Add(f.ttl)}
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

// Invalidate records a write to keys of db, about to be sent: replies of
// those keys are dropped, and reads in flight on them will not fill. keys
// are byte slices, so a write to a key nothing refers to costs no
// allocation (the lookup by string(key) does not copy).
func (c *Cache) Invalidate(db int, keys [][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	byKey := c.keys[db]
	for _, key := range keys {
		ks := byKey[string(key)]
		if ks == nil {
			continue // nothing cached or in flight refers to it
		}
		ks.lastWrite = c.clock
		for e := range ks.entries {
			c.removeEntry(e)
		}
	}
}

// InvalidateDB records a write to unknown keys of db (FLUSHDB, an unknown
// command); db -1 means every db (FLUSHALL, SWAPDB).
func (c *Cache) InvalidateDB(db int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	c.dbEpoch[db] = c.clock
	for k, e := range c.entries {
		if db == -1 || k.db == db {
			c.removeEntry(e)
		}
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}
