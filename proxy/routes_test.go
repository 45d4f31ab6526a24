package proxy

import (
	"testing"

	"github.com/funnel-proxy/funnel/command"
)

// TestTablesByIDMatchByName: what the request path looks up by command ID
// (the route, whether a write keeps the TTL) is what the tables say by
// name, for every command; and the tables do say something (a by-ID
// table made before its by-name one was filled would be all defaults).
func TestTablesByIDMatchByName(t *testing.T) {
	local := 0
	for _, info := range command.All() {
		if routeOf(info) != specOf(info.Name) {
			t.Fatalf("%s: the route by ID is not the route by name", info.Name)
		}
		if keepsTTLOf(info) != commandKeepsTTL(info.Name) {
			t.Fatalf("%s: keepsTTL by ID is not keepsTTL by name", info.Name)
		}
		if routeOf(info).route == routeLocal {
			local++
		}
	}
	if local == 0 || !keepsTTLOf(command.Lookup([][]byte{[]byte("hset")})) {
		t.Fatal("the by-ID tables are empty")
	}
}
