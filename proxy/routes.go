package proxy

import "github.com/funnel-proxy/funnel/command"

// This file is funnel's one routing table: for every command funnel treats
// specially, how it is answered, what it does inside MULTI and in RESP2
// subscribed mode, and where a blocking command's timeout is. A command
// that is not listed is forwarded on a shared connection, may be queued in
// MULTI, and is refused in RESP2 subscribed mode; the router (router.go)
// applies Redis's own checks (unknown command, arity, NOAUTH, no-multi)
// before any of this, so no handler sees arguments the table did not check.

// routeKind says how a command is answered. Its String is the latency
// metric's route label.
type routeKind uint8

const (
	routeShared      routeKind = iota // forwarded on a shared, pipelined connection (coalesced or cached when it may be)
	routeLocal                        // answered by funnel
	routeFetched                      // answered by funnel from an upstream reply it fetches (INFO, COMMAND)
	routeTransaction                  // MULTI ... EXEC, sent as one batch
	routeExclusive                    // on an exclusive connection lent to the client (blocking commands, WATCH)
	routePubSub                       // the pub/sub hub
	routeAdmin                        // on a connection of its own, never queued behind others (SCRIPT KILL)
	routeRefused                      // cannot work through a multiplexer

	// Outcomes of routeShared, for the metric only.
	routeCacheHit
	routeJoined
	numRoutes
)

var routeNames = [numRoutes]string{
	routeShared: "upstream", routeLocal: "local", routeFetched: "fetched", routeTransaction: "transaction",
	routeExclusive: "exclusive", routePubSub: "pubsub", routeAdmin: "admin", routeRefused: "refused",
	routeCacheHit: "cache", routeJoined: "joined",
}

func (k routeKind) String() string { return routeNames[k] }

// multiRule says what a command does between MULTI and EXEC.
type multiRule uint8

const (
	queuedInMulti  multiRule = iota // queued, sent at EXEC (the default)
	actsInMulti                     // acts at once, as in Redis: EXEC, DISCARD, MULTI, WATCH, QUIT, RESET
	refusedInMulti                  // funnel refuses it there: it would act on a shared connection
)

// timeoutKind says where a blocking command's timeout argument is.
type timeoutKind uint8

const (
	noTimeout         timeoutKind = iota
	timeoutLast                   // the last argument (BLPOP k1 k2 timeout)
	timeoutAt                     // at a fixed index
	timeoutAfterBlock             // after the BLOCK option, if given (XREAD); without BLOCK the command does not block
)

// timeoutArg is where and how a blocking command states its timeout.
type timeoutArg struct {
	kind  timeoutKind
	index int  // with timeoutAt
	ms    bool // milliseconds rather than seconds
}

// handler answers or sends a command routed to it. It must complete r,
// now or later. r.args has passed the table's arity check.
type handler func(s *session, r *request)

// routeSpec is one command's row in the table.
type routeSpec struct {
	route      routeKind
	handle     handler // for routeLocal, routeFetched, routeTransaction and WATCH
	multi      multiRule
	subscribed bool       // allowed in RESP2 subscribed mode
	timeout    timeoutArg // for blocking commands
}

// sharedSpec is the row of every command the table does not list.
var sharedSpec = &routeSpec{route: routeShared}

// routes is keyed by the command table's names (subcommands "client|list").
var routes map[string]*routeSpec

func init() {
	local := func(h handler) *routeSpec { return &routeSpec{route: routeLocal, handle: h} }
	blocking := func(t timeoutArg) *routeSpec { return &routeSpec{route: routeExclusive, timeout: t} }
	refused := &routeSpec{route: routeRefused, multi: refusedInMulti}
	pubsub := &routeSpec{route: routePubSub, multi: refusedInMulti, subscribed: true}
	routes = map[string]*routeSpec{
		// The handshake and connection state, answered by funnel.
		"ping":  {route: routeLocal, handle: cmdPing, subscribed: true},
		"echo":  local(cmdEcho),
		"quit":  {route: routeLocal, handle: cmdQuit, multi: actsInMulti, subscribed: true},
		"reset": {route: routeLocal, handle: cmdReset, multi: actsInMulti, subscribed: true},
		"hello": {route: routeLocal, handle: cmdHello, multi: refusedInMulti},
		"auth":  {route: routeLocal, handle: cmdAuth, multi: refusedInMulti},
		// SELECT changes which pool serves the client; inside MULTI it
		// would change the shared connection's db.
		"select":          {route: routeLocal, handle: cmdSelect, multi: refusedInMulti},
		"client|setname":  {route: routeLocal, handle: cmdClientSetName, multi: refusedInMulti},
		"client|getname":  {route: routeLocal, handle: cmdClientGetName, multi: refusedInMulti},
		"client|id":       {route: routeLocal, handle: cmdClientID, multi: refusedInMulti},
		"client|setinfo":  {route: routeLocal, handle: cmdClientSetInfo, multi: refusedInMulti},
		"client|info":     {route: routeLocal, handle: cmdClientInfo, multi: refusedInMulti},
		"client|list":     {route: routeLocal, handle: cmdClientList, multi: refusedInMulti},
		"client|no-evict": {route: routeLocal, handle: cmdClientOnOff, multi: refusedInMulti},
		"client|no-touch": {route: routeLocal, handle: cmdClientOnOff, multi: refusedInMulti},
		"client|help":     {route: routeLocal, handle: cmdClientHelp, multi: refusedInMulti},
		"client|reply":    {route: routeLocal, handle: cmdClientReply, multi: refusedInMulti},
		"client|unblock":  {route: routeLocal, handle: cmdClientUnblock, multi: refusedInMulti},

		// Server-wide answers every new client asks for, fetched and kept.
		"info":          {route: routeFetched, handle: cmdInfo},
		"command":       {route: routeFetched, handle: cmdCommand},
		"command|count": {route: routeFetched, handle: cmdCommand},
		"command|docs":  {route: routeFetched, handle: cmdCommand},
		"command|info":  {route: routeFetched, handle: cmdCommand},
		"command|list":  {route: routeFetched, handle: cmdCommand},
		"command|help":  {route: routeFetched, handle: cmdCommand},

		// Transactions: queued by funnel, sent as one batch at EXEC.
		"multi":   {route: routeTransaction, handle: cmdMulti, multi: actsInMulti},
		"exec":    {route: routeTransaction, handle: cmdExec, multi: actsInMulti},
		"discard": {route: routeTransaction, handle: cmdDiscard, multi: actsInMulti},
		"watch":   {route: routeExclusive, handle: cmdWatch, multi: actsInMulti},
		"unwatch": {route: routeTransaction, handle: cmdUnwatch},

		// Blocking commands: each runs on an exclusive connection.
		"blpop":      blocking(timeoutArg{kind: timeoutLast}),
		"brpop":      blocking(timeoutArg{kind: timeoutLast}),
		"brpoplpush": blocking(timeoutArg{kind: timeoutLast}),
		"blmove":     blocking(timeoutArg{kind: timeoutLast}),
		"bzpopmin":   blocking(timeoutArg{kind: timeoutLast}),
		"bzpopmax":   blocking(timeoutArg{kind: timeoutLast}),
		"blmpop":     blocking(timeoutArg{kind: timeoutAt, index: 1}),
		"bzmpop":     blocking(timeoutArg{kind: timeoutAt, index: 1}),
		"wait":       blocking(timeoutArg{kind: timeoutAt, index: 2, ms: true}),
		"waitaof":    blocking(timeoutArg{kind: timeoutAt, index: 3, ms: true}),
		"xread":      blocking(timeoutArg{kind: timeoutAfterBlock, ms: true}),
		"xreadgroup": blocking(timeoutArg{kind: timeoutAfterBlock, ms: true}),

		// Pub/sub: one upstream subscriber connection for every client.
		"subscribe":    pubsub,
		"psubscribe":   pubsub,
		"ssubscribe":   pubsub,
		"unsubscribe":  pubsub,
		"punsubscribe": pubsub,
		"sunsubscribe": pubsub,

		// A busy script holds its shared connection; the commands that stop
		// it must not queue behind it.
		"script|kill":   {route: routeAdmin},
		"function|kill": {route: routeAdmin},

		// Commands that act on the upstream connection itself, or on the
		// upstream server as a whole.
		"monitor":             refused,
		"sync":                refused,
		"psync":               refused,
		"replconf":            refused,
		"shutdown":            refused,
		"client|kill":         refused,
		"client|pause":        refused,
		"client|unpause":      refused,
		"client|tracking":     refused,
		"client|caching":      refused,
		"client|getredir":     refused,
		"client|trackinginfo": refused,
	}
	specByID = command.ByID(func(info *command.Info) *routeSpec { return specOf(info.Name) })
}

// specOf returns the table's row for the command name.
func specOf(name string) *routeSpec {
	if spec := routes[name]; spec != nil {
		return spec
	}
	return sharedSpec
}

// specByID is specOf for every command, by its ID: the request path looks
// its command's row up in a slice instead of hashing the name. It is made
// at the end of init, once routes is.
var specByID []*routeSpec

// routeOf returns the table's row for a known command.
func routeOf(info *command.Info) *routeSpec { return specByID[info.ID] }
