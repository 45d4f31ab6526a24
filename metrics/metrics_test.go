package metrics

import (
	"testing"

	"github.com/funnel-proxy/funnel/command"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCommandOfIsCommand: the counters found by a command's ID are the
// ones found by its name, so counting through either reaches one label.
func TestCommandOfIsCommand(t *testing.T) {
	m := New(prometheus.NewRegistry())
	for _, name := range []string{"get", "client|setinfo", "waitaof"} {
		info := command.Lookup(nil)
		for _, i := range command.All() {
			if i.Name == name {
				info = i
			}
		}
		if info == nil {
			t.Fatalf("%s is not in the table", name)
		}
		if m.CommandOf(info) != m.Command(name) || m.CommandOf(info) != m.CommandOf(info) {
			t.Fatalf("%s: CommandOf and Command give different counters", name)
		}
		m.CommandOf(info).Client()
		m.Command(name).Client()
		if got := testutil.ToFloat64(m.ClientCommands.WithLabelValues(name)); got != 2 {
			t.Fatalf("%s: funnel_client_commands_total = %v, want 2", name, got)
		}
	}
	if m.CommandOf(command.All()[0]) == m.CommandOf(command.All()[1]) {
		t.Fatal("two commands share counters")
	}
}
