package proxy

import (
	"strconv"
	"strings"

	"github.com/tidwall/redcon"
)

// Funnel speaks RESP2 and RESP3 to clients. A client that sends HELLO 3 is
// served by pools whose upstream connections speak RESP3 too (see poolFor),
// so upstream replies are still forwarded byte for byte. Only the replies
// funnel makes itself need a RESP3 form; the helpers here give it.

// resp3 reports whether the client speaks RESP3.
func (s *session) resp3() bool { return s.info.resp3.Load() }

var replyNull = []byte("_\r\n")

// nullReply is the nil bulk string in the client's protocol.
func (s *session) nullReply() []byte {
	if s.resp3() {
		return replyNull
	}
	return replyNil
}

// verbatim is text as Redis sends INFO and CLIENT LIST: a bulk string in
// RESP2, a verbatim string of format "txt" in RESP3.
func (s *session) verbatim(text []byte) []byte {
	if !s.resp3() {
		return redcon.AppendBulk(nil, text)
	}
	b := make([]byte, 0, len(text)+20)
	b = append(b, '=')
	b = strconv.AppendInt(b, int64(len(text)+4), 10)
	b = append(b, "\r\ntxt:"...)
	b = append(b, text...)
	return append(b, "\r\n"...)
}

// pushHeader starts a pub/sub frame: an array in RESP2, a push in RESP3.
func (s *session) pushHeader(b []byte, n int) []byte {
	if !s.resp3() {
		return redcon.AppendArray(b, n)
	}
	b = append(b, '>')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, "\r\n"...)
}

// helloReply is HELLO's answer: the server's properties, as a map in RESP3
// and a flat array in RESP2.
func helloReply(proto int, version string, id int64) []byte {
	var b []byte
	if proto == 3 {
		b = append(b, "%7\r\n"...)
	} else {
		b = redcon.AppendArray(b, 14)
	}
	for _, kv := range [][2]string{{"server", "redis"}, {"version", version}} {
		b = redcon.AppendBulkString(b, kv[0])
		b = redcon.AppendBulkString(b, kv[1])
	}
	b = redcon.AppendBulkString(b, "proto")
	b = redcon.AppendInt(b, int64(proto))
	b = redcon.AppendBulkString(b, "id")
	b = redcon.AppendInt(b, id)
	for _, kv := range [][2]string{{"mode", "standalone"}, {"role", "master"}} {
		b = redcon.AppendBulkString(b, kv[0])
		b = redcon.AppendBulkString(b, kv[1])
	}
	b = redcon.AppendBulkString(b, "modules")
	return redcon.AppendArray(b, 0)
}

// supportsRESP3 reports whether a Redis of this version knows HELLO 3
// (Redis 6 and later).
func supportsRESP3(version string) bool {
	major, _, _ := strings.Cut(version, ".")
	n, err := strconv.Atoi(major)
	return err == nil && n >= 6
}
