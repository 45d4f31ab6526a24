package proxy

import "github.com/prometheus/client_golang/prometheus"

// commandCounters are one command's counters, resolved once: a labelled
// counter lookup hashes its labels on every call, and each command passes
// through here at least twice.
type commandCounters struct {
	client, upstream, local prometheus.Counter
}

// counters returns the counters for the command name.
func (srv *Server) counters(name string) *commandCounters {
	if c, ok := srv.byCommand.Load(name); ok {
		return c.(*commandCounters)
	}
	c := &commandCounters{
		client:   srv.metrics.ClientCommands.WithLabelValues(name),
		upstream: srv.metrics.UpstreamCommands.WithLabelValues(name),
		local:    srv.metrics.LocalReplies.WithLabelValues(name),
	}
	actual, _ := srv.byCommand.LoadOrStore(name, c)
	return actual.(*commandCounters)
}
