package proxy

import (
	"crypto/sha1"
	"encoding/hex"
	"sync"

	"github.com/funnel-proxy/funnel/command"
	"github.com/funnel-proxy/funnel/script"
)

// scriptBook knows which Lua scripts only read, so that EVAL and EVALSHA of
// them may be coalesced and cached like any read: those whose body funnel
// saw (in an EVAL or a SCRIPT LOAD) and found, from their text, to call
// only read-only commands (package script). A script only ever run with
// EVALSHA, loaded by another process, is one funnel cannot judge: the
// operator names it with --cache-script, which the reloadable settings
// hold (settings.scripts), not the book.
//
// It also knows which of a script's declared keys the script may write
// (script.WrittenKeys): a write-script's keys it only reads are not made
// pending, so running BullMQ's moveToActive, which reads the queue's meta
// hash, neither drops cached reads of that hash nor spoils what funnel knows
// of it for --absorb.
type scriptBook struct {
	mu      sync.RWMutex
	learned map[string]judged // lower-case SHA1 -> what its body does
}

// judged is what funnel found in a script's body.
type judged struct {
	readOnly bool
	writes   script.KeyWrites
}

// maxLearnedScripts bounds what funnel remembers of scripts it saw; an app
// has a few dozen. Past it, new scripts are judged again at each EVAL.
const maxLearnedScripts = 4096

func newScriptBook() *scriptBook {
	return &scriptBook{learned: map[string]judged{}}
}

// readOnly reports whether the script with this SHA1 was judged to only
// read.
func (b *scriptBook) readOnly(sha string) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.learned[sha].readOnly
}

// mayExpire reports whether the script with this SHA1 may give its
// KEYS[i] (1-based) an expiry: true unless funnel saw its body and found
// the key reaches only reads and commandKeepsTTL's writes.
func (b *scriptBook) mayExpire(sha string, i int) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	j, ok := b.learned[sha]
	return !ok || j.writes.MayExpire(i)
}

// mayWrite reports whether the script with this SHA1 may write its
// KEYS[i] (1-based): true unless funnel saw its body and found it only
// reads that key.
func (b *scriptBook) mayWrite(sha string, i int) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	j, ok := b.learned[sha]
	return !ok || j.writes.MayWrite(i)
}

// learn judges a script body funnel saw and returns its SHA1.
func (b *scriptBook) learn(body []byte) string {
	sum := sha1.Sum(body)
	sha := hex.EncodeToString(sum[:])
	b.mu.RLock()
	_, known := b.learned[sha]
	b.mu.RUnlock()
	if known {
		return sha
	}
	j := judged{readOnly: script.ReadOnly(body, commandOnlyReads), writes: script.WrittenKeys(body, commandOnlyReads, commandKeepsTTL)}
	b.mu.Lock()
	if len(b.learned) < maxLearnedScripts {
		b.learned[sha] = j
	}
	b.mu.Unlock()
	return sha
}

// commandOnlyReads reports whether a command a script calls only reads and
// always answers the same for the same data, as a cached reply needs.
func commandOnlyReads(name string) bool {
	info := command.Lookup([][]byte{[]byte(name)})
	return info != nil && info.Subcommands == nil && info.Has(command.ReadOnly) &&
		!info.Has(command.Write) && !info.Has(command.Nondeterministic) && !info.Has(command.Blocking)
}

// keepsTTL lists the writes that can never give a key an expiry: they
// change its value, create it without one, or delete it. A key written
// only by these keeps having no expiry (see cache.BeginWriteKeepingTTL).
// SET, the EXPIRE family, GETEX, RESTORE, RENAME, COPY and MOVE are not
// here, nor is any command funnel does not know.
var keepsTTL = map[string]bool{
	"hset": true, "hsetnx": true, "hmset": true, "hdel": true, "hincrby": true, "hincrbyfloat": true,
	"lpush": true, "rpush": true, "lpushx": true, "rpushx": true, "lpop": true, "rpop": true,
	"lrem": true, "lset": true, "ltrim": true, "linsert": true, "lmove": true, "rpoplpush": true,
	"sadd": true, "srem": true, "spop": true, "smove": true,
	"zadd": true, "zrem": true, "zincrby": true, "zpopmin": true, "zpopmax": true,
	"zremrangebyscore": true, "zremrangebyrank": true, "zremrangebylex": true,
	"xadd": true, "xtrim": true, "xdel": true, "xack": true,
	"incr": true, "incrby": true, "decr": true, "decrby": true, "incrbyfloat": true,
	"append": true, "setrange": true, "setbit": true, "del": true, "unlink": true, "persist": true,
}

// commandKeepsTTL reports whether a command, named in lower case, is one
// of keepsTTL's.
func commandKeepsTTL(name string) bool { return keepsTTL[name] }

// keepsTTLByID is keepsTTL by command ID, for the request path.
var keepsTTLByID = command.ByID(func(info *command.Info) bool { return keepsTTL[info.Name] })

// keepsTTLOf is commandKeepsTTL for a known command.
func keepsTTLOf(info *command.Info) bool { return keepsTTLByID[info.ID] }
