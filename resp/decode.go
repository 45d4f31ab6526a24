package resp

import "bytes"

// The few replies funnel must read rather than forward (pub/sub messages,
// PUBLISH counts, INFO text) are decoded here. Each function takes one whole
// reply, as ReplyScanner delimits it.

// FlatArray returns the elements of an array or push of bulk strings,
// integers, doubles or simple strings, as their raw text: a pub/sub message
// or confirmation, a popped element. It returns nil for anything else.
func FlatArray(raw []byte) [][]byte {
	out, complete := scalars(raw, '*')
	if !complete {
		return nil
	}
	return out
}

// Elements returns the elements of an array, set or push reply, each as
// its whole raw reply (nested aggregates included, as ReplyScanner
// delimits them). ok is false for any other reply, a null array, or a
// reply that is cut short.
func Elements(raw []byte) (elements [][]byte, ok bool) {
	if len(raw) == 0 || (raw[0] != '*' && raw[0] != '~' && raw[0] != '>') {
		return nil, false
	}
	n, raw, ok := aggregateHeader(raw)
	if !ok {
		return nil, false
	}
	elements = make([][]byte, 0, min(n, len(raw)/3)) // an element is at least 3 bytes
	var scan ReplyScanner
	for ; n > 0; n-- {
		m, err := scan.Scan(raw)
		if err != nil || m == 0 {
			return nil, false
		}
		elements = append(elements, raw[:m])
		raw = raw[m:]
	}
	return elements, true
}

// LeadingFields returns the scalar elements of a map (or, from a RESP2
// upstream, a flat array of pairs) up to its first nested one, such as
// HELLO's "modules".
func LeadingFields(raw []byte) [][]byte {
	if len(raw) > 0 && raw[0] == '%' {
		out, _ := scalars(raw, '%')
		return out
	}
	out, _ := scalars(raw, '*')
	return out
}

// aggregateHeader reads the header of an aggregate reply, whatever its
// type byte: its element count, and the bytes after the header. A null
// aggregate (a count of -1) is not ok.
func aggregateHeader(raw []byte) (n int, rest []byte, ok bool) {
	i := bytes.Index(raw, crlf)
	if i < 0 {
		return 0, nil, false
	}
	n, ok = parseLen(raw[1:i])
	if !ok || n < 0 {
		return 0, nil, false
	}
	return n, raw[i+2:], true
}

// scalars reads the scalar elements of an aggregate whose type byte is
// kind (for '*' a push '>' too), and reports whether it read all of them.
func scalars(raw []byte, kind byte) ([][]byte, bool) {
	if len(raw) == 0 || (raw[0] != kind && !(kind == '*' && raw[0] == '>')) {
		return nil, false
	}
	n, raw, ok := aggregateHeader(raw)
	if !ok {
		return nil, false
	}
	if kind == '%' {
		n *= 2
	}
	out := make([][]byte, 0, n)
	for ; n > 0; n-- {
		j := bytes.Index(raw, crlf)
		if j < 1 {
			return out, false
		}
		switch raw[0] {
		case '$':
			l, ok := parseLen(raw[1:j])
			if !ok || l < 0 || j+4+l > len(raw) {
				return out, false
			}
			out = append(out, raw[j+2:j+2+l])
			raw = raw[j+4+l:]
		case ':', '+', ',':
			out = append(out, raw[1:j])
			raw = raw[j+2:]
		default:
			return out, false
		}
	}
	return out, true
}

var crlf = []byte("\r\n")

// Int returns the value of an integer reply.
func Int(raw []byte) (int64, bool) {
	if len(raw) < 4 || raw[0] != ':' || !bytes.HasSuffix(raw, crlf) {
		return 0, false
	}
	n, ok := parseDecimal(raw[1:len(raw)-2], 19)
	return int64(n), ok
}

// Text returns the text of a bulk string (RESP2) or verbatim string (RESP3)
// reply, such as INFO's; ok is false for any other reply.
func Text(raw []byte) (body []byte, ok bool) {
	if len(raw) == 0 || (raw[0] != '$' && raw[0] != '=') {
		return nil, false
	}
	i := bytes.Index(raw, crlf)
	if i < 0 || len(raw) < i+4 {
		return nil, false
	}
	body = raw[i+2 : len(raw)-2]
	if raw[0] == '=' && len(body) >= 4 {
		body = body[4:] // the format, "txt:"
	}
	return body, true
}

// IsError reports whether raw is an error reply (simple or RESP3 blob).
func IsError(raw []byte) bool { return len(raw) > 0 && (raw[0] == '-' || raw[0] == '!') }

// ErrorText returns the text of an error reply, without its '-' and CRLF.
func ErrorText(raw []byte) string {
	return string(bytes.TrimSuffix(bytes.TrimPrefix(raw, []byte("-")), crlf))
}

// SingleElement returns the one element of a one-element array reply (an
// EXEC that ran one command), or raw itself.
func SingleElement(raw []byte) []byte {
	if bytes.HasPrefix(raw, []byte("*1\r\n")) {
		return raw[4:]
	}
	return raw
}

// AsPush turns, in place, an array reply (a pub/sub message as a RESP2
// subscriber connection reads it) into a RESP3 push of the same elements.
func AsPush(raw []byte) []byte {
	if len(raw) > 0 && raw[0] == '*' {
		raw[0] = '>'
	}
	return raw
}
