package proxy

import (
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funnel-proxy/funnel/command"
)

// clientInfo is what CLIENT INFO and CLIENT LIST show of a session. Other
// sessions read it, so the mutable parts are guarded.
type clientInfo struct {
	id          int64
	addr, laddr string
	born        time.Time

	lastCmd    atomic.Pointer[string]
	lastActive atomic.Int64 // unix nanoseconds
	// resp3 is set while the client speaks RESP3 (after HELLO 3). The pub/sub
	// hub reads it to shape the messages it pushes.
	resp3 atomic.Bool

	mu      sync.Mutex
	name    string
	libName string
	libVer  string
	db      int
}

func (c *clientInfo) init(conn net.Conn, id int64) {
	c.id = id
	c.addr = conn.RemoteAddr().String()
	c.laddr = conn.LocalAddr().String()
	if conn.RemoteAddr().Network() == "unix" {
		c.addr = "/unix"
	}
	c.born = time.Now()
	c.lastActive.Store(c.born.UnixNano())
	none := "NULL"
	c.lastCmd.Store(&none)
}

// setLastCommand records the command being run, for the cmd= and idle=
// fields. The name is stored by pointer into the command table, which costs
// no allocation per command; an unknown command leaves the last one shown,
// so nothing a client sends is kept.
func (c *clientInfo) setLastCommand(info *command.Info, at time.Time) {
	// Loads before stores: a pipeline repeats its command and read time, and
	// an unchanged value is not written again.
	if info != nil && c.lastCmd.Load() != &info.Name {
		c.lastCmd.Store(&info.Name)
	}
	if ns := at.UnixNano(); c.lastActive.Load() != ns {
		c.lastActive.Store(ns)
	}
}

func (c *clientInfo) setName(name string) {
	c.mu.Lock()
	c.name = name
	c.mu.Unlock()
}

func (c *clientInfo) getName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.name
}

// line appends the client's line in Redis 7.2's CLIENT LIST format. BullMQ's
// getWorkers splits these lines on spaces and '=' to find workers by name.
// Fields funnel has no meaning for (buffers, memory) show 0.
func (c *clientInfo) line(dst []byte, flags string) []byte {
	c.mu.Lock()
	name, libName, libVer, db := c.name, c.libName, c.libVer, c.db
	c.mu.Unlock()
	now := time.Now()
	idle := now.Sub(time.Unix(0, c.lastActive.Load()))
	field := func(k, v string) {
		dst = append(dst, k...)
		dst = append(dst, '=')
		dst = append(dst, v...)
		dst = append(dst, ' ')
	}
	num := func(k string, v int64) { field(k, strconv.FormatInt(v, 10)) }
	num("id", c.id)
	field("addr", c.addr)
	field("laddr", c.laddr)
	num("fd", c.id+7) // funnel has no fd to show per client; keep it unique and plausible
	field("name", name)
	num("age", int64(now.Sub(c.born)/time.Second))
	num("idle", int64(idle/time.Second))
	field("flags", flags)
	num("db", int64(db))
	for _, k := range []string{"sub", "psub", "ssub"} {
		num(k, 0)
	}
	num("multi", -1)
	for _, k := range []string{"qbuf", "qbuf-free", "argv-mem", "multi-mem", "rbs", "rbp", "obl", "oll", "omem", "tot-mem"} {
		num(k, 0)
	}
	field("events", "r")
	field("cmd", *c.lastCmd.Load())
	field("user", "default")
	num("redir", -1)
	num("resp", int64(c.proto()))
	field("lib-name", libName)
	dst = append(dst, "lib-ver="...)
	dst = append(dst, libVer...)
	return append(dst, '\n')
}

// proto returns the client's RESP version.
func (c *clientInfo) proto() int {
	if c.resp3.Load() {
		return 3
	}
	return 2
}

// validClientName reports whether Redis would accept name for CLIENT
// SETNAME: printable ASCII without spaces.
func validClientName(name []byte) bool {
	for _, c := range name {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

func slicesSortByID(ss []*session) {
	sort.Slice(ss, func(i, j int) bool { return ss[i].id < ss[j].id })
}
