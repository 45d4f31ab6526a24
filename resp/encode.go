package resp

import (
	"strconv"
)

// The Append functions encode the replies funnel makes itself. Replies from
// the upstream are never re-encoded: funnel forwards their bytes.

// AppendError appends an error reply. msg starts with its code ("ERR ...",
// "NOAUTH ..."); CR and LF in it become spaces, as Redis does, so no input
// quoted in an error can break the stream.
func AppendError(dst []byte, msg string) []byte {
	dst = append(dst, '-')
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		dst = append(dst, c)
	}
	return append(dst, '\r', '\n')
}

// AppendStatus appends a simple string reply (+OK).
func AppendStatus(dst []byte, s string) []byte {
	dst = append(dst, '+')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}

// AppendInt appends an integer reply.
func AppendInt(dst []byte, n int64) []byte {
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, '\r', '\n')
}

// AppendBulk appends a bulk string reply.
func AppendBulk(dst []byte, b []byte) []byte {
	dst = appendHeader(dst, '$', len(b))
	dst = append(dst, b...)
	return append(dst, '\r', '\n')
}

// AppendBulkString appends a bulk string reply of s.
func AppendBulkString(dst []byte, s string) []byte {
	dst = appendHeader(dst, '$', len(s))
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}

// AppendArray appends the header of an array of n elements.
func AppendArray(dst []byte, n int) []byte { return appendHeader(dst, '*', n) }

// AppendPush appends the header of a RESP3 push of n elements.
func AppendPush(dst []byte, n int) []byte { return appendHeader(dst, '>', n) }

// AppendMap appends the header of a RESP3 map of n pairs.
func AppendMap(dst []byte, n int) []byte { return appendHeader(dst, '%', n) }

// AppendVerbatim appends text as a RESP3 verbatim string of format "txt".
func AppendVerbatim(dst []byte, text []byte) []byte {
	dst = appendHeader(dst, '=', len(text)+4)
	dst = append(dst, "txt:"...)
	dst = append(dst, text...)
	return append(dst, '\r', '\n')
}

// Replies funnel sends often, in both protocols unless named.
var (
	OK        = []byte("+OK\r\n")
	Pong      = []byte("+PONG\r\n")
	Queued    = []byte("+QUEUED\r\n")
	NilBulk   = []byte("$-1\r\n") // RESP2's nil
	NilArray  = []byte("*-1\r\n") // RESP2's nil array
	Null      = []byte("_\r\n")   // RESP3's null
	ZeroReply = []byte(":0\r\n")
	OneReply  = []byte(":1\r\n")
)
