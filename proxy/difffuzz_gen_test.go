package proxy

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/funnel-proxy/funnel/resp"
)

// The request streams of the differential fuzzer (difffuzz_test.go): the
// hand-written seeds, the command alphabet, its multibulk and inline
// encodings, and the framing mutations.

// diffKeys is the number of keys a case may use: diffKey(id, 0..diffKeys-1).
const diffKeys = 3

// diffKey names key n of case id. Both servers hold the same names, and no
// two cases share one.
func diffKey(id, n int) string { return "df:" + strconv.Itoa(id) + ":" + strconv.Itoa(n) }

// diffCase is one request stream and how it was made.
type diffCase struct {
	id    int
	tags  []string
	in    []byte
	split []int // write the input in pieces cut here
}

func (c diffCase) describe(ref, got sideReply) string {
	return fmt.Sprintf("case %d [%s] %s -> redis %s closed=%v, funnel %s closed=%v",
		c.id, strings.Join(c.tags, " "), quoteBytes(c.in, 160),
		quoteBytes(ref.out, 120), ref.closed, quoteBytes(got.out, 120), got.closed)
}

// diffCaseFor returns case id: a seed, or a random case made from
// (seed, id) alone, so any case can be made again.
func diffCaseFor(seed uint64, id int) diffCase {
	if id < len(diffSeeds) {
		s := diffSeeds[id]
		key := diffKey(id, 0)
		in := strings.ReplaceAll(s.in, "{KL}", strconv.Itoa(len(key)))
		in = strings.ReplaceAll(in, "{K}", key)
		return diffCase{id: id, tags: []string{"seed:" + s.name}, in: []byte(in)}
	}
	return diffGenerate(newRand(seed, uint64(id)), id)
}

// diffSeeds are hand-written edge cases; {K} is replaced by a case key, and
// {KL} by its length.
var diffSeeds = []struct{ name, in string }{
	{"ping", "*1\r\n$4\r\nPING\r\n"},
	{"leading zero bulk", "*2\r\n$3\r\nGET\r\n$0{KL}\r\n{K}\r\n"},
	{"leading zero count", "*02\r\n$4\r\nECHO\r\n$1\r\nx\r\n"},
	{"minus zero bulk", "*2\r\n$4\r\nECHO\r\n$-0\r\n\r\n"},
	{"minus zero count", "*-0\r\nPING\r\n"},
	{"plus bulk", "*2\r\n$4\r\nECHO\r\n$+1\r\nx\r\n"},
	{"plus count", "*+1\r\n$4\r\nPING\r\n"},
	{"space in count", "* 1\r\n$4\r\nPING\r\n"},
	{"count then space", "*1 \r\n$4\r\nPING\r\n"},
	{"bulk -1", "*1\r\n$-1\r\n"},
	{"count -5", "*-5\r\nPING\r\n"},
	{"star zero", "*0\r\n*1\r\n$4\r\nPING\r\n"},
	{"star minus one", "*-1\r\nPING\r\n"},
	{"CR without LF after count", "*1\rX$4\r\nPING\r\n"},
	{"CR without LF after bulk len", "*1\r\n$4\rXPING\r\n"},
	{"LF only", "*1\n$4\nPING\n"},
	{"bad trailer", "*1\r\n$4\r\nPINGxy*1\r\n$4\r\nPING\r\n"},
	{"short trailer", "*2\r\n$4\r\nECHO\r\n$1\r\nab\r\n"},
	{"NUL in count", "*1\x00\r\n$4\r\nPING\r\n"},
	{"NUL in inline", "PING\x00\r\nPING\r\n"},
	{"NUL in inline arg", "ECHO a\x00b\r\n"},
	{"NUL in bulk", "*2\r\n$4\r\nECHO\r\n$3\r\na\x00b\r\n"},
	{"expected dollar", "*1\r\n:5\r\n"},
	{"inline hex escape", "ECHO \"\\x41\\x4a\\n\"\r\n"},
	{"inline bad hex", "ECHO \"\\xZZ\\x4\"\r\n"},
	{"inline single quotes", "ECHO 'it\\'s'\r\n"},
	{"inline quote then char", "ECHO \"a\"b\r\n"},
	{"inline single then char", "ECHO 'a'b\r\n"},
	{"inline unbalanced double", "ECHO \"abc\r\nPING\r\n"},
	{"inline unbalanced single", "ECHO 'abc\r\nPING\r\n"},
	{"inline quote mid word", "ECHO ab\"c d\"\r\n"},
	{"inline empty quotes", "ECHO \"\"\r\nECHO ''\r\n"},
	{"inline escaped quote", "ECHO \"a\\\"b\"\r\n"},
	{"inline tab", "ECHO\t\"tab\\tx\"\r\n"},
	{"inline set get", "SET {K} \"a b\"\r\nGET {K}\r\n"},
	{"empty lines", "\r\n\n   \r\n\t\r\nPING\r\n"},
	{"bare CR", "\rPING\r\n"},
	{"POST inline", "POST / HTTP/1.1\r\nHost: x\r\n\r\nSET {K} yes\r\nGET {K}\r\n"},
	{"Host inline", "PING\r\nHost: example.com\r\nPING\r\n"},
	{"post lower case", "post /x\r\nPING\r\n"},
	{"POST multibulk", "*1\r\n$4\r\nPOST\r\n*3\r\n$3\r\nSET\r\n${KL}\r\n{K}\r\n$3\r\nyes\r\n"},
	{"Host multibulk", "*2\r\n$5\r\nHost:\r\n$1\r\nx\r\nPING\r\n"},
	{"QUIT then more", "QUIT\r\nPING\r\n"},
	{"QUIT multibulk", "*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n"},
	{"inline 60K", "ECHO " + strings.Repeat("x", 60000) + "\r\n"},
	{"inline 400K", "ECHO " + strings.Repeat("x", 400000) + "\r\nPING\r\n"},
	{"inline 100K no newline", strings.Repeat("y", 100000)},
	{"inline 30K no newline", strings.Repeat("y", 30000)},
	{"long count 20 digits", "*" + strings.Repeat("1", 20) + "\r\n"},
	{"long count leading zeros", "*" + strings.Repeat("0", 1000) + "1\r\n$4\r\nPING\r\n"},
	{"long count 100K", "*" + strings.Repeat("1", 100000)},
	{"long bulk len 100K", "*1\r\n$" + strings.Repeat("1", 100000)},
	{"bulk at max", "*2\r\n$4\r\nECHO\r\n$536870912\r\n"},
	{"bulk over max", "*2\r\n$4\r\nECHO\r\n$536870913\r\n"},
	{"count over int", "*2147483648\r\n"},
	{"count at int", "*2147483647\r\n"},
	{"truncated", "*3\r\n$3\r\nSET\r\n${KL}\r\n{K}\r\n"},
	{"wrong arity", "GET\r\n*1\r\n$3\r\nGET\r\nSET {K}\r\nPING a b\r\nECHO\r\n"},
	{"unknown", "NOSUCH a b\r\n*2\r\n$6\r\nnosuch\r\n$1\r\na\r\n"},
	{"mixed case", "pInG\r\nEcHo x\r\n"},
	{"eval argv", "EVAL \"return ARGV\" 0 a b\r\n*5\r\n$4\r\nEVAL\r\n$11\r\nreturn ARGV\r\n$1\r\n0\r\n$1\r\nx\r\n$0\r\n\r\n"},
	{"list", "RPUSH {K} a b c\r\nLRANGE {K} 0 -1\r\nINCR {K}\r\nDEL {K}\r\nINCR {K}\r\n"},
}

// diffGenerate makes a random case: one to four pieces (commands of the
// alphabet as multibulk or inline, or special lines), then up to three
// framing mutations. It tries again while a line falls where Redis's answer
// depends on how its reads split the input (see splitZone).
func diffGenerate(r *rand.Rand, id int) diffCase {
	for {
		if c := diffGenerateOnce(r, id); !splitZone(c.in) {
			return c
		}
	}
}

// splitZone reports whether in has a run without '\n', or without '\r',
// of 63 to 97 KiB. Redis looks for the end of an inline line ('\n') or of a
// "*N" or "$N" header ('\r') after each read of up to 16 KiB, and gives up
// once more than 64 KiB have come without it; so a line of 64 to 80 KiB is
// accepted or not depending on where the reads fall. A mutation such as
// "dup" can grow a long line into that zone.
func splitZone(in []byte) bool {
	for _, sep := range []byte{'\n', '\r'} {
		start := 0
		for i := 0; i <= len(in); i++ {
			if i < len(in) && in[i] != sep {
				continue
			}
			if n := i - start; n > 63<<10 && n < 97<<10 {
				return true
			}
			start = i + 1
		}
	}
	return false
}

func diffGenerateOnce(r *rand.Rand, id int) diffCase {
	c := diffCase{id: id}
	var bounds []int // piece boundaries, for insertions between commands
	for range 1 + r.IntN(4) {
		bounds = append(bounds, len(c.in))
		if r.IntN(10) == 0 {
			c.in = append(c.in, diffSpecials[r.IntN(len(diffSpecials))]...)
			c.tags = append(c.tags, "special")
			continue
		}
		args := diffCommand(r, id)
		if r.IntN(100) < 55 {
			c.in = resp.AppendCommand(c.in, args...)
			c.tags = append(c.tags, "multibulk")
		} else {
			c.in = appendInline(r, c.in, args)
			c.tags = append(c.tags, "inline")
		}
	}
	bounds = append(bounds, len(c.in))
	// Insertions at a boundary come first, while bounds are right.
	switch r.IntN(20) {
	case 0:
		at := bounds[r.IntN(len(bounds))]
		c.in = insert(c.in, at, overlongLine(r))
		c.tags = append(c.tags, "overlong")
	case 1:
		at := bounds[r.IntN(len(bounds))]
		c.in = insert(c.in, at, longCount(r))
		c.tags = append(c.tags, "longcount")
	}
	for range r.IntN(4) {
		var tag string
		c.in, tag = mutate(r, c.in)
		c.tags = append(c.tags, tag)
	}
	if r.IntN(5) == 0 && len(c.in) > 1 {
		for range 1 + r.IntN(3) {
			c.split = append(c.split, 1+r.IntN(len(c.in)-1))
		}
		slices.Sort(c.split)
		c.tags = append(c.tags, "split")
	}
	return c
}

// diffSpecials are pieces that are not commands of the alphabet.
var diffSpecials = []string{
	"\r\n", "\n", "   \r\n", "*0\r\n", "*-1\r\n",
	"POST / HTTP/1.1\r\n", "Host: 127.0.0.1:6379\r\n", "*1\r\n$4\r\nPOST\r\n",
	"*2\r\n$5\r\nHost:\r\n$9\r\nlocalhost\r\n", "QUIT\r\n",
}

func bs(args ...string) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = []byte(a)
	}
	return out
}

// diffUnknown are command names no Redis knows.
var diffUnknown = []string{"NOSUCH", "fooBar", "GETT", "X", "-1", "\"", "hello!"}

// diffCommand returns one command of the alphabet.
func diffCommand(r *rand.Rand, id int) [][]byte {
	key := func() []byte { return []byte(diffKey(id, r.IntN(diffKeys))) }
	val := func() []byte { return diffValue(r) }
	name := func(n string) []byte {
		if r.IntN(4) == 0 { // command names are case-insensitive
			b := []byte(n)
			for i := range b {
				if r.IntN(2) == 0 {
					b[i] ^= 0x20
				}
			}
			return b
		}
		return []byte(n)
	}
	switch r.IntN(16) {
	case 0:
		return [][]byte{name("PING")}
	case 1:
		return [][]byte{name("PING"), val()}
	case 2, 3:
		return [][]byte{name("ECHO"), val()}
	case 4:
		return [][]byte{name("SET"), key(), val()}
	case 5, 6:
		return [][]byte{name("GET"), key()}
	case 7:
		return [][]byte{name("DEL"), key(), key()}
	case 8:
		args := [][]byte{name("RPUSH"), key()}
		for range 1 + r.IntN(3) {
			args = append(args, val())
		}
		return args
	case 9:
		return [][]byte{name("LRANGE"), key(), []byte(strconv.Itoa(r.IntN(3) - 1)), []byte(strconv.Itoa(r.IntN(5) - 2))}
	case 10:
		return [][]byte{name("INCR"), key()}
	case 11:
		args := [][]byte{name("EVAL"), []byte("return ARGV"), []byte("0")}
		for range r.IntN(4) {
			args = append(args, val())
		}
		return args
	case 12:
		args := [][]byte{[]byte(diffUnknown[r.IntN(len(diffUnknown))])}
		for range r.IntN(3) {
			args = append(args, val())
		}
		return args
	case 13:
		wrong := [][][]byte{bs("GET"), bs("SET", "x"), bs("PING", "a", "b"), bs("ECHO"), bs("INCR"),
			bs("LRANGE", "x", "0"), bs("EVAL"), bs("DEL"), bs("QUIT", "now")}
		return wrong[r.IntN(len(wrong))]
	case 14:
		return [][]byte{name("EVAL"), []byte("return ARGV"), []byte(strconv.Itoa(r.IntN(3) - 1)), val()}
	default:
		if r.IntN(5) == 0 {
			return [][]byte{name("QUIT")}
		}
		return [][]byte{name("PING")}
	}
}

var diffWords = []string{"", "a", "hello", "a b", "x\"y", "it's", "\\x41", "tab\there", "cr\rlf\n",
	"nul\x00nul", "\xff\xfe", "12", "-3", "007", "+1", "$3", "*1", "\r\n", "PING", "'", "\"", "\\"}

func diffValue(r *rand.Rand) []byte {
	switch n := r.IntN(20); {
	case n < 12:
		return []byte(diffWords[r.IntN(len(diffWords))])
	case n < 17:
		b := make([]byte, 1+r.IntN(12))
		for i := range b {
			b[i] = byte('a' + r.IntN(26))
		}
		return b
	case n < 19:
		b := make([]byte, r.IntN(9))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return b
	default:
		return bytes.Repeat([]byte("v"), 200+r.IntN(2000))
	}
}

// appendInline appends args as an inline request that Redis reads back as
// the same arguments: plain words, "double quotes" with escapes, or 'single
// quotes' where those can hold the argument.
func appendInline(r *rand.Rand, dst []byte, args [][]byte) []byte {
	for i, a := range args {
		if i > 0 {
			dst = append(dst, []string{" ", " ", "  ", "\t"}[r.IntN(4)]...)
		}
		plain := len(a) > 0 && bytes.IndexFunc(a, func(c rune) bool {
			return c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\'
		}) < 0
		single := bytes.IndexAny(a, "'\\\r\n\x00") < 0
		switch {
		case plain && r.IntN(3) > 0:
			dst = append(dst, a...)
		case single && r.IntN(3) == 0:
			dst = append(dst, '\'')
			dst = append(dst, a...)
			dst = append(dst, '\'')
		default:
			dst = append(dst, '"')
			for _, c := range a {
				switch {
				case c == '"' || c == '\\':
					dst = append(dst, '\\', c)
				case c == '\n':
					dst = append(dst, `\n`...)
				case c == '\r':
					dst = append(dst, `\r`...)
				case c == '\t':
					dst = append(dst, `\t`...)
				case c < ' ' || c >= 0x7f || r.IntN(30) == 0:
					hex := fmt.Sprintf("%02x", c)
					if r.IntN(2) == 0 {
						hex = strings.ToUpper(hex)
					}
					dst = append(dst, `\x`+hex...)
				default:
					dst = append(dst, c)
				}
			}
			dst = append(dst, '"')
		}
	}
	if r.IntN(5) == 0 {
		return append(dst, '\n')
	}
	return append(dst, '\r', '\n')
}

func insert(b []byte, at int, piece []byte) []byte {
	out := make([]byte, 0, len(b)+len(piece))
	out = append(out, b[:at]...)
	out = append(out, piece...)
	return append(out, b[at:]...)
}

// overlongLine returns a long inline line, clearly under 64 KiB or clearly
// over 400 KiB: between the two, whether Redis accepts a line depends on
// how its reads (16 KiB, then growing as its buffer doubles) happen to
// split the input; Redis disagrees with itself there (see the self-check).
// Funnel refuses every line over 64 KiB.
func overlongLine(r *rand.Rand) []byte {
	n := 1000 + r.IntN(59000)
	if r.IntN(2) == 0 {
		n = 400<<10 + r.IntN(100<<10)
	}
	line := []byte("ECHO ")
	if r.IntN(3) == 0 {
		line = nil
	}
	line = append(line, bytes.Repeat([]byte{'x'}, n)...)
	if r.IntN(4) > 0 {
		line = append(line, '\r', '\n')
	}
	return line
}

// longCount returns a "*" line with a very long count, under 64 KiB or over
// 400 KiB (see overlongLine).
func longCount(r *rand.Rand) []byte {
	n := 20 + r.IntN(1000)
	if r.IntN(3) == 0 {
		n = 400<<10 + r.IntN(10<<10)
	}
	line := []byte{'*'}
	for i := range n {
		if i == 0 || r.IntN(10) > 0 {
			line = append(line, byte('1'+r.IntN(9)))
		} else {
			line = append(line, '0')
		}
	}
	if r.IntN(2) == 0 {
		line = append(line, '\r', '\n')
	}
	return line
}

// countVariants rewrite the digits d of a "*N" or "$N" header.
var countVariants = []func(d string) string{
	func(d string) string { return "0" + d },
	func(d string) string { return "00" + d },
	func(d string) string { return "+" + d },
	func(d string) string { return "-0" },
	func(d string) string { return "-" + d },
	func(d string) string { return " " + d },
	func(d string) string { return d + " " },
	func(d string) string { return d + "\t" },
	func(d string) string { return strings.Repeat("0", 30) + d },
	func(d string) string { return "9223372036854775808" },
	func(d string) string { return "99999999999999999999999" },
	func(d string) string { return "" },
	func(d string) string { return "0x" + d },
	func(d string) string { return d + "0" },
	func(d string) string { n, _ := strconv.Atoi(d); return strconv.Itoa(n + 1) },
	func(d string) string { n, _ := strconv.Atoi(d); return strconv.Itoa(n - 1) },
	func(d string) string { return "2147483648" },
	func(d string) string { return "536870913" },
	func(d string) string { return "1e1" },
	func(d string) string { return d + "\x00" },
}

// mutate applies one random framing mutation and names it.
func mutate(r *rand.Rand, b []byte) ([]byte, string) {
	if len(b) == 0 {
		return []byte(diffSpecials[r.IntN(len(diffSpecials))]), "special"
	}
	switch r.IntN(11) {
	case 0, 1: // a count or length header
		var heads []int
		for i := 0; i+1 < len(b); i++ {
			if (b[i] == '*' || b[i] == '$') && (i == 0 || b[i-1] == '\n') {
				heads = append(heads, i+1)
			}
		}
		if len(heads) == 0 {
			break
		}
		s := heads[r.IntN(len(heads))]
		e := s
		for e < len(b) && (b[e] == '-' || b[e] >= '0' && b[e] <= '9') {
			e++
		}
		v := countVariants[r.IntN(len(countVariants))](string(b[s:e]))
		return append(append(append([]byte{}, b[:s]...), v...), b[e:]...), "count"
	case 2: // CR not followed by LF, and the like
		var crlf []int
		for i := 0; i+1 < len(b); i++ {
			if b[i] == '\r' && b[i+1] == '\n' {
				crlf = append(crlf, i)
			}
		}
		if len(crlf) == 0 {
			break
		}
		i := crlf[r.IntN(len(crlf))]
		v := []string{"\r" + string(rune('A'+r.IntN(26))), "\n", "\r", "\r\r\n", "\n\r", "\r\x00"}[r.IntN(6)]
		return append(append(append([]byte{}, b[:i]...), v...), b[i+2:]...), "crlf"
	case 3: // the two bytes after a bulk's data
		var trailers []int
		for i := 0; i+1 < len(b); i++ {
			if b[i] != '$' || i > 0 && b[i-1] != '\n' {
				continue
			}
			e := i + 1
			for e < len(b) && b[e] >= '0' && b[e] <= '9' {
				e++
			}
			n, err := strconv.Atoi(string(b[i+1 : e]))
			if err == nil && n >= 0 && n <= len(b) && e+2+n+2 <= len(b) && b[e] == '\r' { // n bounded first: a length near MaxInt would overflow the sum
				trailers = append(trailers, e+2+n)
			}
		}
		if len(trailers) == 0 {
			break
		}
		i := trailers[r.IntN(len(trailers))]
		v := []string{"xy", "\n\n", "\r\r", "\r", "", "\r\nX", "\x00\x00", "\n\r"}[r.IntN(8)]
		return append(append(append([]byte{}, b[:i]...), v...), b[i+2:]...), "trailer"
	case 4:
		return bytes.Clone(b[:r.IntN(len(b))]), "truncate"
	case 5:
		return insert(b, r.IntN(len(b)+1), []byte{0}), "nul"
	case 6:
		out := bytes.Clone(b)
		out[r.IntN(len(out))] = byte(r.IntN(256))
		return out, "flip"
	case 7:
		q := []string{`"`, `'`, `\x4`, `\x41`, `\"`, `\`, `"a"b`, `'a'b`, `""`, `''`, `\xZZ`, `\n`}[r.IntN(12)]
		return insert(b, r.IntN(len(b)+1), []byte(q)), "quote"
	case 8:
		return insert(b, r.IntN(len(b)+1), []byte{" \t"[r.IntN(2)]}), "space"
	case 9:
		i := r.IntN(len(b))
		j := i + r.IntN(len(b)-i) + 1
		return insert(b, j, b[i:j]), "dup"
	}
	junk := make([]byte, 1+r.IntN(5))
	for i := range junk {
		junk[i] = byte(r.IntN(256))
	}
	return insert(b, r.IntN(len(b)+1), junk), "junk"
}
