// Package resp finds where RESP messages end without decoding their values.
//
// Funnel forwards the bytes a client sent and the bytes the upstream replied,
// unchanged. It only needs to know where each message ends, so this package
// scans headers and skips payloads; it never copies or converts a value.
package resp

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrReplyProtocol means the upstream sent bytes that are not a RESP reply.
var ErrReplyProtocol = errors.New("resp: bad reply")

// maxReplyLine bounds a reply header or simple string line. Redis never sends a
// status line anywhere near this; a longer one means a broken stream.
const maxReplyLine = 64 << 20

// ReplyScanner finds the end of one RESP2 or RESP3 reply in a buffer that
// grows as bytes arrive. It keeps its place between calls, so a large nested
// reply that arrives in many reads is scanned once, not once per read.
//
// The zero value is ready to use.
type ReplyScanner struct {
	pos   int   // bytes of the current reply already scanned
	stack []int // elements still expected at each open aggregate level
}

// Scan returns the length of the first complete reply in buf, or 0 when buf
// does not yet hold all of it. Between calls that return 0, buf must keep the
// same leading bytes (it may grow). After a complete reply the scanner resets
// and the next call scans from the start of the buffer it is given.
func (s *ReplyScanner) Scan(buf []byte) (int, error) {
	for {
		if s.pos >= len(buf) {
			return 0, nil
		}
		nl := bytes.IndexByte(buf[s.pos:], '\n')
		if nl < 0 {
			if len(buf)-s.pos > maxReplyLine {
				return 0, s.fail(buf, "line too long")
			}
			return 0, nil
		}
		if nl < 2 || buf[s.pos+nl-1] != '\r' {
			return 0, s.fail(buf, "line without CRLF")
		}
		typ := buf[s.pos]
		body := buf[s.pos+1 : s.pos+nl-1]
		next := s.pos + nl + 1
		done := true
		switch typ {
		case '+', '-', ':', '_', ',', '#', '(':
		case '$', '!', '=':
			n, ok := parseLen(body)
			if !ok {
				return 0, s.fail(buf, "bad bulk length")
			}
			if n >= 0 {
				if next+n+2 > len(buf) {
					return 0, nil // payload not here yet; the header is rescanned next time
				}
				if buf[next+n] != '\r' || buf[next+n+1] != '\n' {
					return 0, s.fail(buf, "bulk without CRLF")
				}
				next += n + 2
			}
		case '*', '~', '>', '%', '|':
			n, ok := parseLen(body)
			if !ok {
				return 0, s.fail(buf, "bad aggregate length")
			}
			switch typ {
			case '%':
				n *= 2
			case '|':
				// An attribute map is followed by the value it annotates;
				// both together count as one element of the parent.
				n = n*2 + 1
			}
			if n > 0 {
				s.stack = append(s.stack, n)
				done = false
			}
		default:
			return 0, s.fail(buf, "unknown type byte")
		}
		s.pos = next
		for done && len(s.stack) > 0 {
			top := len(s.stack) - 1
			s.stack[top]--
			if s.stack[top] > 0 {
				done = false
			} else {
				s.stack = s.stack[:top]
			}
		}
		if done {
			n := s.pos
			s.pos = 0
			return n, nil
		}
	}
}

// Reset forgets a partly scanned reply.
func (s *ReplyScanner) Reset() {
	s.pos = 0
	s.stack = s.stack[:0]
}

func (s *ReplyScanner) fail(buf []byte, what string) error {
	err := fmt.Errorf("%w: %s near %q", ErrReplyProtocol, what, Quote(buf[s.pos:], 32))
	s.Reset()
	return err
}

// parseLen parses a RESP length: a decimal integer, or -1 for null.
func parseLen(b []byte) (int, bool) {
	n, ok := parseDecimal(b, 18)
	if !ok || n < -1 {
		return 0, false
	}
	return n, true
}

// parseDecimal parses an optionally negative decimal integer of at most
// maxDigits digits, the form of every RESP length and count.
func parseDecimal(b []byte, maxDigits int) (int, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > maxDigits {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		return -n, true
	}
	return n, true
}

// Quote returns b for an error message, cut to at most max bytes, so protocol
// junk never floods a log line or an error reply.
func Quote(b []byte, max int) string {
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
