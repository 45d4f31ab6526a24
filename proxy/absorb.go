package proxy

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/funnel-proxy/funnel/cache"
	"github.com/funnel-proxy/funnel/glob"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// AbsorbRule lets funnel answer an HSET or HMSET itself when the hash at a
// key matching Pattern (a Redis glob) is known to hold the same values
// already: for Window after funnel forwarded a write of them, saw it
// succeed and saw that the key has no expiry, with no write to the key
// since. BullMQ rewrites its queue's meta hash with the same values on
// every new Queue, which is the case this is for.
//
// The risk, plainly: a write to the hash from elsewhere (another process,
// another funnel) within the window is not seen, so funnel may answer :0
// for fields that no longer hold those values; and the write funnel skips
// causes no keyspace notification and does not touch other clients'
// WATCH of the key (funnel never absorbs while one of its own clients
// watches it).
type AbsorbRule struct {
	Pattern string
	Window  time.Duration
}

// String is the rule as ParseAbsorbRule reads it: "bull:*:meta=1m0s".
func (r AbsorbRule) String() string { return r.Pattern + "=" + r.Window.String() }

// ParseAbsorbRule reads "PATTERN=WINDOW", for example "bull:*:meta=60s".
func ParseAbsorbRule(s string) (AbsorbRule, error) {
	i := strings.LastIndexByte(s, '=')
	if i <= 0 {
		return AbsorbRule{}, fmt.Errorf("absorb rule %q: want PATTERN=WINDOW, e.g. 'bull:*:meta=60s'", s)
	}
	d, err := time.ParseDuration(s[i+1:])
	if err != nil || d <= 0 {
		return AbsorbRule{}, fmt.Errorf("absorb rule %q: WINDOW must be a positive duration like 60s", s)
	}
	return AbsorbRule{Pattern: s[:i], Window: d}, nil
}

// absorbWindow returns the window of st's first rule key matches, or 0.
func (st *settings) absorbWindow(key []byte) time.Duration {
	for _, r := range st.absorbRules {
		if glob.Match(r.Pattern, string(key)) {
			return r.Window
		}
	}
	return 0
}

// tryAbsorb answers an HSET or HMSET funnel may absorb, and reports whether
// it did. One it may not absorb yet is marked to teach funnel its values if
// it succeeds (see learnHash). Never inside MULTI (queued commands do not
// come here), nor in a WATCH span, nor while any client of this funnel
// watches the key.
func (s *session) tryAbsorb(r *request) bool {
	info, args := r.info, r.args
	c := s.srv.cache
	if c == nil || info == nil || (info.Name != "hset" && info.Name != "hmset") || len(args)%2 != 0 || s.lease != nil {
		return false
	}
	key := args[1]
	st := s.srv.live()
	window := st.absorbWindow(key)
	if window == 0 || s.srv.watches.watched(s.db, key) {
		return false
	}
	if c.HashHolds(s.db, key, args[2:], time.Now()) {
		s.srv.metrics.Absorbed.Add(1)
		r.route = routeLocal
		r.counters.Local()
		if info.Name == "hmset" {
			r.completeLocal(resp.OK)
		} else {
			r.completeLocal(resp.ZeroReply)
		}
		return true
	}
	r.absorb = &absorbPlan{window: window, db: s.db, pool: s.pool, gen: st.cacheGen}
	return false
}

// absorbPlan is what a write marked by tryAbsorb needs to teach funnel its
// values: the rule's window, the db and pool the write went to, and the
// settings' cache generation the window came from.
type absorbPlan struct {
	window time.Duration
	db     int
	pool   *pool.Pool
	gen    uint64
}

// learnHash runs as a write marked by tryAbsorb succeeds, before its write
// ends: funnel now knows the hash holds those values. The key must have no
// expiry for them to be absorbed: unless funnel asked within the rule's
// window and has seen nothing since that could give it one (see
// cache.ConfirmNoExpiry), it asks the upstream (PTTL, billed like any
// command).
func (r *request) learnHash(w cache.Write) {
	srv := r.s.srv
	a := r.absorb
	if srv.live().cacheGen != a.gen {
		return // a reload changed the rules since the window was chosen
	}
	key := append([]byte(nil), r.args[1]...)
	gen, confirmed, ok := srv.cache.LearnHash(w, a.db, key, r.args[2:], r.start.Add(a.window))
	if !ok || confirmed {
		return
	}
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		asked := time.Now()
		reply, err := srv.fetch(a.pool, "pttl", resp.AppendCommand(nil, []byte("PTTL"), key))
		if n, ok := resp.Int(reply); err == nil && ok && n == -1 {
			srv.cache.ConfirmNoExpiry(a.db, key, gen, asked.Add(a.window))
		}
	}()
}

// watchSet counts, by db and key, the WATCHes funnel's clients hold, so no
// write is absorbed under a WATCH it should have touched.
type watchSet struct {
	mu   sync.Mutex
	keys map[watchKey]int
}

type watchKey struct {
	db  int
	key string
}

func (w *watchSet) add(db int, keys [][]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.keys == nil {
		w.keys = map[watchKey]int{}
	}
	for _, k := range keys {
		w.keys[watchKey{db, string(k)}]++
	}
}

func (w *watchSet) remove(db int, keys []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range keys {
		wk := watchKey{db, k}
		if w.keys[wk]--; w.keys[wk] <= 0 {
			delete(w.keys, wk)
		}
	}
}

func (w *watchSet) watched(db int, key []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.keys[watchKey{db, string(key)}] > 0
}
