package resp

import (
	"io"
)

// ProtocolError is a malformed client request. Its text is what Redis says
// for the same input, so the session can reply "-ERR " + Error() and close.
type ProtocolError struct{ msg string }

func (e *ProtocolError) Error() string { return "Protocol error: " + e.msg }

func protoErr(msg string) error { return &ProtocolError{msg: msg} }

// Limits bound what one request may declare. A declaration over a limit is
// refused before any memory is set aside for it.
type Limits struct {
	MaxArgs      int // most arguments in one multibulk request
	MaxBulk      int // most bytes in one argument
	MaxInlineLen int // longest inline request line
}

// DefaultLimits are Redis's own: 512 MiB per argument (proto-max-bulk-len),
// INT_MAX arguments, 64 KiB inline lines.
var DefaultLimits = Limits{MaxArgs: 1<<31 - 1, MaxBulk: 512 << 20, MaxInlineLen: 64 << 10}

// Command is one parsed client request. Raw is the request in RESP multibulk
// form (an inline request is converted), Args are views into Raw. Both stay
// valid only until the next call to Read.
type Command struct {
	Raw  []byte
	Args [][]byte
}

const (
	initialBuf = 16 << 10
	// maxHeader bounds a "*N" or "$N" line, as Redis's PROTO_INLINE_MAX_SIZE does.
	maxHeader = 64 << 10
)

// RequestReader reads client commands, RESP multibulk or inline, from a
// stream. It resumes a partly received command where it stopped, so a large
// request is scanned once however many reads it takes.
type RequestReader struct {
	rd     io.Reader
	limits Limits
	buf    []byte
	start  int // first byte of the command being parsed
	end    int // end of buffered bytes

	// State of a multibulk request being parsed at buf[start:], with offsets
	// relative to start because the buffer can move between reads.
	argc  int   // declared arguments, or -1 before the header is read
	pos   int   // offset of the next unparsed byte
	marks []int // start and end offset of each argument read so far

	args   [][]byte
	inline []byte // RESP form of the last inline request
}

// NewRequestReader returns a reader of commands from rd under the given limits.
func NewRequestReader(rd io.Reader, limits Limits) *RequestReader {
	return &RequestReader{rd: rd, limits: limits, buf: make([]byte, initialBuf), argc: -1}
}

// SetLimits changes the limits for the next command, for example once a client
// has authenticated.
func (r *RequestReader) SetLimits(l Limits) { r.limits = l }

// Read returns the next command. It returns a *ProtocolError for malformed
// input and the reader's error (io.EOF on a clean close) when the stream ends.
func (r *RequestReader) Read() (Command, error) {
	for {
		cmd, ok, err := r.parse()
		if err != nil || ok {
			return cmd, err
		}
		if err := r.fill(); err != nil {
			return Command{}, err
		}
	}
}

// fill reads more bytes, first making room: it moves the partial command to
// the front, doubles a full buffer, and drops one that grew huge and is idle.
func (r *RequestReader) fill() error {
	if r.start == r.end && len(r.buf) > 4*initialBuf {
		r.buf = make([]byte, initialBuf)
		r.start, r.end = 0, 0
	}
	if r.start > 0 {
		n := copy(r.buf, r.buf[r.start:r.end])
		r.start, r.end = 0, n
	}
	if r.end == len(r.buf) {
		grown := make([]byte, 2*len(r.buf))
		copy(grown, r.buf[:r.end])
		r.buf = grown
	}
	n, err := r.rd.Read(r.buf[r.end:])
	r.end += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// parse tries to take one command from the buffer.
func (r *RequestReader) parse() (Command, bool, error) {
	for r.start < r.end {
		if r.argc < 0 && r.buf[r.start] != '*' {
			cmd, ok, err := r.parseInline()
			if ok && len(cmd.Args) == 0 {
				continue // an empty line is no command
			}
			return cmd, ok, err
		}
		cmd, ok, err := r.parseMultibulk()
		if ok && len(cmd.Args) == 0 {
			continue // "*0" or "*-1": Redis ignores it
		}
		return cmd, ok, err
	}
	return Command{}, false, nil
}

// line returns the offset, relative to start, just past the next "\r\n" at
// or after off, or -1 when the line has not arrived yet.
func (r *RequestReader) line(off int) int {
	b := r.buf[r.start+off : r.end]
	for i, c := range b {
		if c == '\n' {
			return off + i + 1
		}
	}
	return -1
}

func (r *RequestReader) parseMultibulk() (Command, bool, error) {
	if r.argc < 0 {
		eol := r.line(1)
		if eol < 0 {
			if r.end-r.start > maxHeader {
				return Command{}, false, protoErr("too big mbulk count string")
			}
			return Command{}, false, nil
		}
		n, ok := parseCount(r.buf[r.start+1 : r.start+eol])
		if !ok || n > r.limits.MaxArgs {
			return Command{}, false, protoErr("invalid multibulk length")
		}
		if n <= 0 {
			r.start += eol
			return Command{}, true, nil
		}
		r.argc, r.pos, r.marks = n, eol, r.marks[:0]
	}
	for len(r.marks)/2 < r.argc {
		if r.start+r.pos >= r.end {
			return Command{}, false, nil
		}
		if c := r.buf[r.start+r.pos]; c != '$' {
			return Command{}, false, protoErr("expected '$', got '" + string(c) + "'")
		}
		eol := r.line(r.pos + 1)
		if eol < 0 {
			if r.end-(r.start+r.pos) > maxHeader {
				return Command{}, false, protoErr("too big bulk count string")
			}
			return Command{}, false, nil
		}
		n, ok := parseCount(r.buf[r.start+r.pos+1 : r.start+eol])
		if !ok || n < 0 || n > r.limits.MaxBulk {
			return Command{}, false, protoErr("invalid bulk length")
		}
		if r.start+eol+n+2 > r.end {
			return Command{}, false, nil
		}
		if r.buf[r.start+eol+n] != '\r' || r.buf[r.start+eol+n+1] != '\n' {
			return Command{}, false, protoErr("invalid bulk length")
		}
		r.marks = append(r.marks, eol, eol+n)
		r.pos = eol + n + 2
	}
	raw := r.buf[r.start : r.start+r.pos]
	r.args = r.args[:0]
	for i := 0; i < len(r.marks); i += 2 {
		r.args = append(r.args, raw[r.marks[i]:r.marks[i+1]])
	}
	r.start += r.pos
	r.argc, r.pos = -1, 0
	return Command{Raw: raw, Args: r.args}, true, nil
}

// parseCount parses the number after '*' or '$' up to the line's "\r\n".
func parseCount(b []byte) (int, bool) {
	if len(b) < 2 || b[len(b)-2] != '\r' {
		return 0, false
	}
	return parseDecimal(b[:len(b)-2], 10)
}

func (r *RequestReader) parseInline() (Command, bool, error) {
	eol := r.line(0)
	if eol < 0 {
		if r.end-r.start > r.limits.MaxInlineLen {
			return Command{}, false, protoErr("too big inline request")
		}
		return Command{}, false, nil
	}
	line := r.buf[r.start : r.start+eol-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > r.limits.MaxInlineLen {
		return Command{}, false, protoErr("too big inline request")
	}
	args, ok := splitArgs(line)
	if !ok {
		return Command{}, false, protoErr("unbalanced quotes in request")
	}
	r.start += eol
	r.inline = appendCommand(r.inline[:0], args)
	return Command{Raw: r.inline, Args: args}, true, nil
}

// AppendCommand appends args as a RESP multibulk request.
func AppendCommand(dst []byte, args ...[]byte) []byte { return appendCommand(dst, args) }

func appendCommand(dst []byte, args [][]byte) []byte {
	dst = appendHeader(dst, '*', len(args))
	for _, a := range args {
		dst = appendHeader(dst, '$', len(a))
		dst = append(dst, a...)
		dst = append(dst, '\r', '\n')
	}
	return dst
}

func appendHeader(dst []byte, c byte, n int) []byte {
	dst = append(dst, c)
	var digits [20]byte
	i := len(digits)
	if n == 0 {
		i--
		digits[i] = '0'
	}
	for ; n > 0; n /= 10 {
		i--
		digits[i] = byte('0' + n%10)
	}
	dst = append(dst, digits[i:]...)
	return append(dst, '\r', '\n')
}
