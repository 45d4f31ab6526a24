package proxy

import (
	"bytes"
	"strconv"
	"strings"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// infoWithFunnel lists INFO section arguments that include funnel's section.
var infoWithFunnel = map[string]bool{"all": true, "everything": true, "default": true, "funnel": true}

// cmdInfo answers INFO from the upstream's reply with a "# Funnel" section
// added, and with the Clients section's client counts made funnel's own,
// as CLIENT LIST shows funnel's clients. The upstream's text is otherwise
// kept as it is: clients read redis_version, loading and maxmemory_policy.
//
// Freshness: an INFO a client sends before any command but the handshake's
// (ioredis's ready check, BullMQ's version check, on every new connection)
// may be answered from a copy up to Options.InfoTTL old; any later INFO is
// fetched anew, sharing only a fetch that started after it arrived, so a
// client that acts and then reads its counters (total_error_replies,
// errorstats) sees its action.
func cmdInfo(s *session, r *request) {
	args := r.args
	withFunnel, onlyFunnel := len(args) == 1, len(args) > 1
	for _, a := range args[1:] {
		sec := strings.ToLower(string(a))
		withFunnel = withFunnel || infoWithFunnel[sec]
		onlyFunnel = onlyFunnel && sec == "funnel"
	}
	srv := s.srv
	if onlyFunnel {
		r.completeLocal(s.verbatim(srv.funnelInfo()))
		return
	}
	maxAge, since := fresh, r.start
	if !s.sentData {
		maxAge, since = max(srv.opts.InfoTTL, fresh), time.Time{}
	}
	// INFO's text is the same in both protocols: one copy serves both.
	key := cacheKey(args) // args do not outlive this call
	p, raw, resp3 := s.pool, r.Raw, s.resp3()
	srv.fetchAsync(r, func() ([]byte, error) {
		reply, err := srv.infoCache.get(srv, p, key, "info", raw, maxAge, since)
		body, ok := resp.Text(reply)
		if err != nil || !ok {
			return reply, err
		}
		srv.noteVersion(body)
		body = srv.ownClients(body)
		if withFunnel {
			body = append(append(body, "\r\n"...), srv.funnelInfo()...)
		}
		if resp3 {
			return resp.AppendVerbatim(nil, body), nil
		}
		return resp.AppendBulk(nil, body), nil
	})
}

// ownClients returns a copy of an INFO text whose connected_clients and
// blocked_clients count funnel's clients, not the upstream's.
func (srv *Server) ownClients(info []byte) []byte {
	out := make([]byte, 0, len(info)+64)
	for _, line := range bytes.SplitAfter(info, []byte("\n")) {
		switch {
		case bytes.HasPrefix(line, []byte("connected_clients:")):
			out = strconv.AppendInt(append(out, "connected_clients:"...), int64(srv.sessionCount()), 10)
			out = append(out, "\r\n"...)
		case bytes.HasPrefix(line, []byte("blocked_clients:")):
			out = strconv.AppendInt(append(out, "blocked_clients:"...), srv.blockedClients.Load(), 10)
			out = append(out, "\r\n"...)
		default:
			out = append(out, line...)
		}
	}
	return out
}

// noteVersion remembers the upstream's redis_version for HELLO.
func (srv *Server) noteVersion(info []byte) {
	_, rest, ok := bytes.Cut(info, []byte("redis_version:"))
	if !ok {
		return
	}
	v, _, _ := bytes.Cut(rest, []byte("\r\n"))
	version := string(v)
	srv.version.Store(&version)
}

// upstreamVersion returns the upstream's redis_version, fetching INFO from p
// the first time: the whole of it, as the handshake's INFO asks, so that
// the INFO a client sends after HELLO (ioredis's ready check) is answered
// from the same fetch. When the upstream answers INFO with an error,
// that error reply comes back as refusal, to pass on as it is. It must not
// run on a session's reader.
func (srv *Server) upstreamVersion(p *pool.Pool) (version string, refusal []byte, err error) {
	if v := srv.version.Load(); v != nil {
		return *v, nil, nil
	}
	args := [][]byte{[]byte("INFO")}
	reply, err := srv.infoCache.get(srv, p, cacheKey(args), "info", resp.AppendCommand(nil, args...), max(srv.opts.InfoTTL, fresh), time.Time{})
	if err != nil {
		return "", nil, err
	}
	body, ok := resp.Text(reply)
	if !ok {
		return "", reply, nil
	}
	srv.noteVersion(body)
	if v := srv.version.Load(); v != nil {
		return *v, nil, nil
	}
	return "unknown", nil, nil
}

// funnelInfo renders the "# Funnel" INFO section.
func (srv *Server) funnelInfo() []byte {
	var b []byte
	line := func(k string, v int64) {
		b = append(b, k...)
		b = append(b, ':')
		b = strconv.AppendInt(b, v, 10)
		b = append(b, "\r\n"...)
	}
	m := srv.metrics
	b = append(b, "# Funnel\r\n"...)
	b = append(b, "funnel_version:"+Version+"\r\n"...)
	line("funnel_connected_clients", int64(srv.sessionCount()))
	line("funnel_blocked_clients", srv.blockedClients.Load())
	line("funnel_pool_size", int64(srv.pool.Size()))
	line("funnel_upstream_connections", int64(srv.sharedConnsUp()))
	line("funnel_client_commands", m.ClientTotal.Load())
	line("funnel_upstream_commands", m.UpstreamTotal.Load())
	line("funnel_local_replies", m.LocalTotal.Load())
	line("funnel_absorbed_writes", m.Absorbed.Load())
	line("funnel_buffered_bytes", m.Buffered.Load())
	line("funnel_max_memory", srv.opts.MaxMemory)
	b = srv.configInfo(b)
	return srv.cacheInfo(b)
}

// configInfo renders the effective configuration for INFO's Funnel
// section: what the process started with and, for what Reload changes,
// what is in force now (preset rules included). Durations are in
// milliseconds; lists are comma separated, empty when there is none.
// funnel_pool_size and funnel_max_memory come before it.
func (srv *Server) configInfo(b []byte) []byte {
	st := srv.live()
	line := func(k string, v int64) []byte {
		b = strconv.AppendInt(append(append(b, k...), ':'), v, 10)
		return append(b, "\r\n"...)
	}
	list := func(k string, items []string) []byte {
		b = append(append(b, k...), ':')
		for i, it := range items {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendInfoValue(b, it)
		}
		return append(b, "\r\n"...)
	}
	rules := make([]string, 0, len(st.cacheRules))
	for _, r := range st.cacheRules {
		rules = append(rules, r.String())
	}
	b = list("funnel_cache_rules", rules)
	rules = rules[:0]
	for _, r := range st.absorbRules {
		rules = append(rules, r.String())
	}
	b = list("funnel_absorb_rules", rules)
	b = list("funnel_share_waits", st.shareWaits)
	b = line("funnel_cache_script_count", int64(len(st.scriptList)))
	b = list("funnel_cache_scripts", st.scriptList)
	b = list("funnel_deny", st.denyList)
	b = append(appendInfoValue(append(b, "funnel_preset:"...), st.preset), "\r\n"...)
	coalesce := int64(1)
	if srv.opts.DisableCoalesce {
		coalesce = 0
	}
	b = line("funnel_coalesce", coalesce)
	b = line("funnel_max_exclusive", int64(srv.pool.Options().MaxExclusive))
	b = line("funnel_exclusive_wait_ms", srv.opts.ExclusiveWait.Milliseconds())
	b = line("funnel_client_output_limit", st.outputLimit)
	b = line("funnel_client_write_timeout_ms", st.writeTimeout.Milliseconds())
	// Options.InfoTTL < 0 is --info-ttl 0: never reused, shown as 0.
	b = line("funnel_info_ttl_ms", max(srv.opts.InfoTTL, 0).Milliseconds())
	return b
}

// appendInfoValue appends s to an INFO line, with the bytes that would end
// the line or split a list (CR, LF, comma) shown as '?'.
func appendInfoValue(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\r', '\n', ',':
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return b
}

// cacheKey is args in lower case, joined.
func cacheKey(args [][]byte) string {
	return strings.ToLower(string(bytes.Join(args, []byte{0})))
}
