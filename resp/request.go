package resp

import (
	"io"
	"sync"
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
	MaxBulk      int // most bytes in one argument (proto-max-bulk-len)
	MaxInlineLen int // longest inline request line still waiting for its newline
	// Unauthenticated applies Redis's limits for a client that has not
	// authenticated yet: at most 10 arguments of at most 16 KiB each, with
	// Redis's own error texts.
	Unauthenticated bool
}

// DefaultLimits are Redis's own: 512 MiB per argument (proto-max-bulk-len),
// INT_MAX arguments, 64 KiB inline lines.
var DefaultLimits = Limits{MaxArgs: 1<<31 - 1, MaxBulk: 512 << 20, MaxInlineLen: 64 << 10}

// Command is one parsed client request. Raw is the request in canonical RESP
// multibulk form, which is what funnel forwards: an inline request, or a
// multibulk one Redis accepts though it is not canonical (a CR not followed
// by LF, a bulk not followed by CRLF), is encoded anew. Args are views into
// Raw. Unless Owned, both stay valid only until the next call to Read.
type Command struct {
	Raw  []byte
	Args [][]byte
	// Owned reports that Raw is the caller's to keep: for a large request
	// the reader hands its buffer over instead of letting it be copied, so
	// a 400 MB argument is held once.
	Owned bool
}

// Rebase returns c's arguments as views into raw, which must be a copy of
// c.Raw. dst is reused.
func (c Command) Rebase(raw []byte, dst [][]byte) [][]byte {
	dst = dst[:0]
	for _, a := range c.Args {
		// a is c.Raw[i:j] for some i, j, and c.Raw's capacity is its
		// length: a's capacity tells i.
		i := cap(c.Raw) - cap(a)
		dst = append(dst, raw[i:i+len(a)])
	}
	return dst
}

// Budget accounts for the reader's buffer within a wider memory bound.
type Budget interface {
	// Add records that the buffer grew by n bytes (shrank, for n < 0).
	Add(n int64)
	// Wait returns once more bytes may be read, or an error when the bound
	// stays exceeded past its deadline.
	Wait() error
}

const (
	initialBuf = 16 << 10
	// maxHeader bounds a "*N" or "$N" line, as Redis's PROTO_INLINE_MAX_SIZE does.
	maxHeader = 64 << 10
	// bigArg is Redis's PROTO_MBULK_BIG_ARG: from this size an argument is
	// read into a buffer sized for it, which the request then owns.
	bigArg = 32 << 10
	// bigSlack is room left after a big argument for the small ones that
	// usually follow it (SET k <big> EX 10), so they need no second buffer.
	bigSlack = 4 << 10
	// Redis's limits before AUTH.
	unauthMaxArgs = 10
	unauthMaxBulk = 16 << 10
	maxInt32      = 1<<31 - 1
)

// RequestReader reads client commands, RESP multibulk or inline, from a
// stream, deciding exactly as redis-server 7 does what is a request, what is
// incomplete and what is a protocol error (networking.c,
// processMultibulkBuffer and processInlineBuffer). It resumes a partly
// received command where it stopped, so a large request is scanned once
// however many reads it takes.
type RequestReader struct {
	rd         io.Reader
	limits     Limits
	budget     Budget
	beforeRead func()
	buf        []byte
	start      int // first byte of the command being parsed
	end        int // end of buffered bytes

	// State of a multibulk request being parsed at buf[start:], with offsets
	// relative to start because the buffer can move between reads.
	argc      int   // declared arguments, or -1 before the header is read
	pos       int   // offset of the next unparsed byte
	bulk      int   // declared length of the argument being read, -1 before its header
	need      int   // bytes of the command the next step needs buffered, when known
	canonical bool  // every line so far ends in CRLF and every argument in CRLF
	marks     []int // start and end offset of each argument read so far

	args    [][]byte
	enc     []byte   // canonical form of the last inline or non-canonical request
	encArgs [][]byte // its arguments
}

// NewRequestReader returns a reader of commands from rd under the given limits.
// It holds no buffer until the first read (see ReleaseIdle).
func NewRequestReader(rd io.Reader, limits Limits) *RequestReader {
	return &RequestReader{rd: rd, limits: limits, argc: -1, bulk: -1}
}

// idleBufs recycles the buffers of readers that went idle, so a server with
// thousands of quiet clients holds a buffer only for the ones that are
// sending.
var idleBufs = sync.Pool{New: func() any { return new([initialBuf]byte) }}

// ReleaseIdle gives the reader's buffer back when nothing is buffered in
// it, so an idle client holds none; the next read takes one again. The
// arguments of the last command returned are invalid afterwards.
func (r *RequestReader) ReleaseIdle() {
	if r.start != r.end || len(r.buf) != initialBuf {
		return
	}
	idleBufs.Put((*[initialBuf]byte)(r.buf))
	if r.budget != nil {
		r.budget.Add(-initialBuf)
	}
	r.buf, r.start, r.end = nil, 0, 0
}

// SetLimits changes the limits for the next command, for example once a client
// has authenticated.
func (r *RequestReader) SetLimits(l Limits) { r.limits = l }

// SetBudget makes the reader account its buffer in b and wait on it before
// reading.
func (r *RequestReader) SetBudget(b Budget) {
	r.budget = b
	if len(r.buf) > 0 {
		b.Add(int64(len(r.buf)))
	}
}

// SetBeforeRead makes the reader call f each time it is about to read from
// its stream, which may block: the caller's moment to send what the
// commands already returned produced.
func (r *RequestReader) SetBeforeRead(f func()) { r.beforeRead = f }

// Close returns the buffer's accounting to the budget, and the buffer to
// the pool. The arguments of the last command returned are invalid after.
func (r *RequestReader) Close() {
	if r.budget != nil {
		r.budget.Add(-int64(len(r.buf)))
		r.budget = nil
	}
	if len(r.buf) == initialBuf {
		// Back for the next reader: a client that leaves takes a buffer
		// for the read that tells of its leaving.
		idleBufs.Put((*[initialBuf]byte)(r.buf))
	}
	r.buf = nil
}

// Buffered reports how many bytes were read and not yet returned as commands.
func (r *RequestReader) Buffered() int { return r.end - r.start }

// Size reports the size of the reader's buffer.
func (r *RequestReader) Size() int { return len(r.buf) }

// InitialBuffer is the size of a reader's buffer until a request needs more.
const InitialBuffer = initialBuf

// Read returns the next command. It returns a *ProtocolError for malformed
// input, the budget's error, or the reader's error (io.EOF on a clean close)
// when the stream ends.
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
// the front, grows a full buffer (to the exact size a big argument needs),
// and drops one that grew huge and is idle.
func (r *RequestReader) fill() error {
	if r.beforeRead != nil {
		r.beforeRead()
	}
	if r.budget != nil {
		if err := r.budget.Wait(); err != nil {
			return err
		}
	}
	if r.buf == nil {
		r.buf = idleBufs.Get().(*[initialBuf]byte)[:]
		if r.budget != nil {
			r.budget.Add(initialBuf)
		}
	}
	if r.start == r.end && len(r.buf) > 4*initialBuf {
		r.resize(initialBuf)
	}
	if r.start > 0 {
		n := copy(r.buf, r.buf[r.start:r.end])
		r.start, r.end = 0, n
	}
	switch {
	case r.need >= bigArg && r.need > len(r.buf):
		r.resize(r.need + bigSlack)
	case r.end == len(r.buf):
		r.resize(max(2*len(r.buf), r.need))
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

// resize moves the buffered bytes to a buffer of size n (n >= r.end-r.start).
func (r *RequestReader) resize(n int) {
	grown := make([]byte, n)
	m := copy(grown, r.buf[r.start:r.end])
	if r.budget != nil {
		r.budget.Add(int64(n - len(r.buf)))
	}
	r.buf, r.start, r.end = grown, 0, m
}

// parse tries to take one command from the buffer.
func (r *RequestReader) parse() (Command, bool, error) {
	r.need = 0
	for r.start < r.end {
		var cmd Command
		var ok bool
		var err error
		if r.argc < 0 && r.buf[r.start] != '*' {
			cmd, ok, err = r.parseInline()
		} else {
			cmd, ok, err = r.parseMultibulk()
		}
		if err != nil || !ok {
			return cmd, ok, err
		}
		if len(cmd.Args) > 0 {
			return cmd, true, nil
		}
		// An empty line, "*0" or "*-1": Redis ignores it.
	}
	return Command{}, false, nil
}

// indexCR returns the offset of the first '\r' in b at or after from, or -1.
// Like Redis's strchr on its query buffer, the search stops at a NUL byte:
// a line with a NUL before its CR never ends.
func indexCR(b []byte, from int) int {
	for i := from; i < len(b); i++ {
		switch b[i] {
		case '\r':
			return i
		case 0:
			return -1
		}
	}
	return -1
}

func (r *RequestReader) parseMultibulk() (Command, bool, error) {
	b := r.buf[r.start:r.end]
	if r.argc < 0 {
		cr := indexCR(b, 0)
		if cr < 0 && len(b) > maxHeader || cr > maxHeader {
			// Redis reads a client in chunks of 16 KiB or so: it gives up
			// on a line once more than 64 KiB came without its end, so a
			// longer line is refused however it arrives.
			return Command{}, false, protoErr("too big mbulk count string")
		}
		if cr < 0 {
			return Command{}, false, nil
		}
		if cr+2 > len(b) {
			return Command{}, false, nil // Redis waits for the byte after CR, whatever it is
		}
		n, ok := string2ll(b[1:cr])
		switch {
		case !ok || n > maxInt32 || n > int64(r.limits.MaxArgs):
			return Command{}, false, protoErr("invalid multibulk length")
		case n > unauthMaxArgs && r.limits.Unauthenticated:
			return Command{}, false, protoErr("unauthenticated multibulk length")
		}
		if n <= 0 {
			r.start += cr + 2
			return Command{}, true, nil
		}
		r.argc, r.pos, r.bulk, r.marks = int(n), cr+2, -1, r.marks[:0]
		r.canonical = b[cr+1] == '\n'
	}
	for len(r.marks)/2 < r.argc {
		if r.bulk < 0 {
			cr := indexCR(b, r.pos)
			if cr < 0 && len(b)-r.pos > maxHeader || cr-r.pos > maxHeader {
				return Command{}, false, protoErr("too big bulk count string")
			}
			if cr < 0 {
				return Command{}, false, nil
			}
			if cr+2 > len(b) {
				return Command{}, false, nil
			}
			if c := b[r.pos]; c != '$' {
				if c == '\r' || c == '\n' {
					c = ' ' // Redis maps CR and LF in error texts to spaces
				}
				return Command{}, false, protoErr("expected '$', got '" + string([]byte{c}) + "'")
			}
			n, ok := string2ll(b[r.pos+1 : cr])
			switch {
			case !ok || n < 0 || n > int64(r.limits.MaxBulk):
				return Command{}, false, protoErr("invalid bulk length")
			case n > unauthMaxBulk && r.limits.Unauthenticated:
				return Command{}, false, protoErr("unauthenticated bulk length")
			}
			if b[cr+1] != '\n' {
				r.canonical = false
			}
			r.pos, r.bulk = cr+2, int(n)
		}
		if len(b)-r.pos < r.bulk+2 {
			r.need = r.pos + r.bulk + 2
			return Command{}, false, nil
		}
		// Redis does not look at the two bytes after an argument: it
		// skips them whatever they are.
		if b[r.pos+r.bulk] != '\r' || b[r.pos+r.bulk+1] != '\n' {
			r.canonical = false
		}
		r.marks = append(r.marks, r.pos, r.pos+r.bulk)
		r.pos += r.bulk + 2
		r.bulk = -1
	}
	raw := b[:r.pos:r.pos]
	r.args = r.args[:0]
	for i := 0; i < len(r.marks); i += 2 {
		r.args = append(r.args, raw[r.marks[i]:r.marks[i+1]])
	}
	consumed := r.pos
	r.argc, r.pos = -1, 0
	if !r.canonical {
		r.start += consumed
		return r.encode(r.args), true, nil
	}
	cmd := Command{Raw: raw, Args: r.args}
	if len(raw) >= bigArg && r.end-(r.start+consumed) <= initialBuf {
		// Hand the buffer over with the command, and start a new one for
		// what follows it: a big request is then never copied.
		rest := r.buf[r.start+consumed : r.end]
		if r.budget != nil {
			r.budget.Add(-int64(len(r.buf)))
		}
		r.buf = make([]byte, initialBuf)
		if r.budget != nil {
			r.budget.Add(initialBuf)
		}
		r.start, r.end = 0, copy(r.buf, rest)
		cmd.Owned = true
		// The reader's own slice of arguments must not keep the request's
		// buffer alive once the caller is done with it.
		cmd.Args = append([][]byte(nil), r.args...)
		clear(r.args)
		return cmd, true, nil
	}
	r.start += consumed
	return cmd, true, nil
}

// encode returns args as a command in canonical form, in the reader's own
// buffer, with Args pointing into it.
func (r *RequestReader) encode(args [][]byte) Command {
	enc := appendCommand(r.enc[:0], args)
	if cap(r.enc) > 4*initialBuf && cap(enc) == cap(r.enc) && len(enc) < initialBuf {
		enc = appendCommand(make([]byte, 0, initialBuf), args) // do not keep a huge one
	}
	r.enc = enc
	raw := enc[:len(enc):len(enc)]
	out := r.encArgs[:0]
	off := headerLen(len(args))
	for _, a := range args {
		off += headerLen(len(a))
		out = append(out, raw[off:off+len(a)])
		off += len(a) + 2
	}
	r.encArgs = out
	return Command{Raw: raw, Args: out}
}

// headerLen is the length of "$<n>\r\n" (or "*<n>\r\n").
func headerLen(n int) int {
	d := 1
	for ; n >= 10; n /= 10 {
		d++
	}
	return d + 3
}

func (r *RequestReader) parseInline() (Command, bool, error) {
	b := r.buf[r.start:r.end]
	nl := -1
	for i, c := range b {
		if c == '\n' {
			nl = i
			break
		}
		if c == 0 {
			break // Redis's strchr stops here: this line never ends
		}
	}
	if nl < 0 && len(b) > r.limits.MaxInlineLen || nl > r.limits.MaxInlineLen {
		// As with header lines: a line longer than the limit is refused
		// however it arrives.
		return Command{}, false, protoErr("too big inline request")
	}
	if nl < 0 {
		return Command{}, false, nil
	}
	line := b[:nl]
	if nl > 0 && line[nl-1] == '\r' {
		line = line[:nl-1]
	}
	args, ok := splitArgs(line)
	if !ok {
		return Command{}, false, protoErr("unbalanced quotes in request")
	}
	r.start += nl + 1
	if len(args) == 0 {
		return Command{}, true, nil
	}
	return r.encode(args), true, nil
}

// ParseInt parses a decimal integer as Redis does (string2ll), for the
// integer arguments funnel reads itself.
func ParseInt(b []byte) (int64, bool) { return string2ll(b) }

// string2ll parses a decimal integer exactly as Redis's string2ll does: no
// sign but a leading '-', no leading zeros, no spaces, fewer than 21 bytes,
// within int64.
func string2ll(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) >= 21 {
		return 0, false
	}
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
		if len(b) == 0 {
			return 0, false
		}
	}
	if b[0] < '1' || b[0] > '9' {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if v > (1<<64-1)/10 {
			return 0, false
		}
		v *= 10
		if v > 1<<64-1-uint64(c-'0') {
			return 0, false
		}
		v += uint64(c - '0')
	}
	if neg {
		if v > 1<<63 {
			return 0, false
		}
		return -int64(v), true
	}
	if v > 1<<63-1 {
		return 0, false
	}
	return int64(v), true
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
