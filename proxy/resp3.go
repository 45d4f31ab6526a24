package proxy

import (
	"strconv"
	"strings"

	"github.com/funnel-proxy/funnel/resp"
)

// Funnel speaks RESP2 and RESP3 to clients. A client that sends HELLO 3 is
// served by pools whose upstream connections speak RESP3 too (see poolFor),
// so upstream replies are still forwarded byte for byte. Only the replies
// funnel makes itself need a RESP3 form; the helpers here give it.

// resp3 reports whether the client speaks RESP3.
func (s *session) resp3() bool { return s.info.resp3.Load() }

// nullReply is the nil bulk string in the client's protocol.
func (s *session) nullReply() []byte {
	if s.resp3() {
		return resp.Null
	}
	return resp.NilBulk
}

// verbatim is text as Redis sends INFO and CLIENT LIST: a bulk string in
// RESP2, a verbatim string of format "txt" in RESP3.
func (s *session) verbatim(text []byte) []byte {
	if !s.resp3() {
		return resp.AppendBulk(nil, text)
	}
	return resp.AppendVerbatim(make([]byte, 0, len(text)+20), text)
}

// pushHeader starts a pub/sub frame: an array in RESP2, a push in RESP3.
func (s *session) pushHeader(b []byte, n int) []byte {
	if !s.resp3() {
		return resp.AppendArray(b, n)
	}
	return resp.AppendPush(b, n)
}

// helloReply is HELLO's answer: the server's properties, as a map in RESP3
// and a flat array in RESP2.
func helloReply(proto int, version string, id int64) []byte {
	var b []byte
	if proto == 3 {
		b = resp.AppendMap(b, 7)
	} else {
		b = resp.AppendArray(b, 14)
	}
	for _, kv := range [][2]string{{"server", "redis"}, {"version", version}} {
		b = resp.AppendBulkString(b, kv[0])
		b = resp.AppendBulkString(b, kv[1])
	}
	b = resp.AppendBulkString(b, "proto")
	b = resp.AppendInt(b, int64(proto))
	b = resp.AppendBulkString(b, "id")
	b = resp.AppendInt(b, id)
	for _, kv := range [][2]string{{"mode", "standalone"}, {"role", "master"}} {
		b = resp.AppendBulkString(b, kv[0])
		b = resp.AppendBulkString(b, kv[1])
	}
	b = resp.AppendBulkString(b, "modules")
	return resp.AppendArray(b, 0)
}

// supportsRESP3 reports whether a Redis of this version knows HELLO 3
// (Redis 6 and later).
func supportsRESP3(version string) bool {
	major, _, _ := strings.Cut(version, ".")
	n, err := strconv.Atoi(major)
	return err == nil && n >= 6
}
