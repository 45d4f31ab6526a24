package resp

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"strings"
	"testing"
	"testing/iotest"
)

func readAll(t *testing.T, rd io.Reader, limits Limits) ([][]string, []string, error) {
	t.Helper()
	r := NewRequestReader(rd, limits)
	var cmds [][]string
	var raws []string
	for {
		cmd, err := r.Read()
		if err != nil {
			return cmds, raws, err
		}
		var args []string
		for _, a := range cmd.Args {
			args = append(args, string(a))
		}
		cmds = append(cmds, args)
		raws = append(raws, string(cmd.Raw))
	}
}

func TestRequestReaderMultibulkAndInline(t *testing.T) {
	in := "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" +
		"*0\r\n" +
		"\r\n" +
		"SET a \"x\\ty\\x41\" 'it\\'s'\r\n" +
		"PING\n" +
		"*3\r\n$3\r\nSET\r\n$3\r\nb\x00c\r\n$0\r\n\r\n"
	cmds, raws, err := readAll(t, iotest.OneByteReader(strings.NewReader(in)), DefaultLimits)
	if err != io.EOF {
		t.Fatalf("err = %v", err)
	}
	want := [][]string{{"GET", "k"}, {"SET", "a", "x\tyA", "it's"}, {"PING"}, {"SET", "b\x00c", ""}}
	if len(cmds) != len(want) {
		t.Fatalf("got %q, want %q", cmds, want)
	}
	for i := range want {
		if strings.Join(cmds[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("cmd %d: got %q, want %q", i, cmds[i], want[i])
		}
	}
	if raws[1] != "*4\r\n$3\r\nSET\r\n$1\r\na\r\n$4\r\nx\tyA\r\n$4\r\nit's\r\n" {
		t.Errorf("inline raw = %q", raws[1])
	}
	if raws[0] != "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" {
		t.Errorf("multibulk raw = %q", raws[0])
	}
}

func TestRequestReaderProtocolErrors(t *testing.T) {
	small := Limits{MaxArgs: 4, MaxBulk: 8, MaxInlineLen: 16}
	cases := map[string]string{
		"*x\r\n":                               "Protocol error: invalid multibulk length",
		"*5\r\n":                               "Protocol error: invalid multibulk length",
		"*1\r\n+GET\r\n":                       "Protocol error: expected '$', got '+'",
		"*1\r\n$9\r\n":                         "Protocol error: invalid bulk length",
		"*1\r\n$-1\r\n":                        "Protocol error: invalid bulk length",
		"*01\r\n":                              "Protocol error: invalid multibulk length",
		"*+1\r\n":                              "Protocol error: invalid multibulk length",
		"*-0\r\n":                              "Protocol error: invalid multibulk length",
		"* 1\r\n":                              "Protocol error: invalid multibulk length",
		"*1\r\n$01\r\na\r\n":                   "Protocol error: invalid bulk length",
		"*1\r\n$-0\r\n":                        "Protocol error: invalid bulk length",
		"*1\r\n$+1\r\na\r\n":                   "Protocol error: invalid bulk length",
		"*1\r\n\r\n":                           "Protocol error: expected '$', got ' '",
		"SET a \"b\r\n":                        "Protocol error: unbalanced quotes in request",
		"SET a \"b\"c\r\n":                     "Protocol error: unbalanced quotes in request",
		strings.Repeat("a", 40):                "Protocol error: too big inline request",
		"*1\r\n$" + strings.Repeat("1", 70000): "Protocol error: too big bulk count string",
	}
	for in, want := range cases {
		_, _, err := readAll(t, strings.NewReader(in), small)
		var pe *ProtocolError
		if !errors.As(err, &pe) || err.Error() != want {
			t.Errorf("%q: got %v, want %q", Quote([]byte(in), 20), err, want)
		}
	}
}

// TestRequestReaderRefusesBeforeAllocating declares a 400 MiB argument and
// sends none of it: the limit answers at once and the buffer stays small.
func TestRequestReaderRefusesBeforeAllocating(t *testing.T) {
	r := NewRequestReader(strings.NewReader("*1\r\n$419430400\r\n"), Limits{MaxArgs: 10, MaxBulk: 1 << 20, MaxInlineLen: 1024})
	if _, err := r.Read(); err == nil || err.Error() != "Protocol error: invalid bulk length" {
		t.Fatalf("err = %v", err)
	}
	if len(r.buf) > initialBuf {
		t.Fatalf("buffer grew to %d", len(r.buf))
	}
}

// randomChunks returns a reader that hands out data in random small pieces.
type randomChunks struct {
	data []byte
	rng  *rand.Rand
}

func (c *randomChunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := c.rng.Intn(13) + 1
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// TestRequestReaderRandomSplits pushes thousands of random commands through
// odd chunk sizes and checks every one arrives intact.
func TestRequestReaderRandomSplits(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var stream []byte
	var want [][][]byte
	for i := 0; i < 3000; i++ {
		args := make([][]byte, rng.Intn(5)+1)
		for j := range args {
			a := make([]byte, rng.Intn(40))
			rng.Read(a)
			args[j] = a
		}
		if i%100 == 0 { // now and then a large argument
			args[0] = bytes.Repeat([]byte{byte(i)}, 70000)
		}
		stream = AppendCommand(stream, args...)
		want = append(want, args)
	}
	r := NewRequestReader(&randomChunks{data: stream, rng: rng}, DefaultLimits)
	for i, w := range want {
		cmd, err := r.Read()
		if err != nil {
			t.Fatalf("cmd %d: %v", i, err)
		}
		if len(cmd.Args) != len(w) {
			t.Fatalf("cmd %d: %d args, want %d", i, len(cmd.Args), len(w))
		}
		for j := range w {
			if !bytes.Equal(cmd.Args[j], w[j]) {
				t.Fatalf("cmd %d arg %d differs", i, j)
			}
		}
		if !bytes.Equal(cmd.Raw, AppendCommand(nil, w...)) {
			t.Fatalf("cmd %d raw differs", i)
		}
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("tail: %v", err)
	}
}

// FuzzRequestReader checks that any input, read in any chunk size, never
// panics, parses to the same commands as read whole, and that every command
// funnel would forward is canonical: its Raw is exactly the encoding of its
// arguments, so Redis parses it the same way.
func FuzzRequestReader(f *testing.F) {
	f.Add([]byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n"), uint8(3))
	f.Add([]byte("SET a \"\\x41b\" 'c'\n*1\r\n$4\r\nPING\r\n"), uint8(1))
	f.Add([]byte("*1\r\n$-1\r\n"), uint8(2))
	f.Add([]byte("*1\rX$3\rYGETab*01\r\n"), uint8(4))
	f.Add([]byte("*2\r\n$4\r\nPING\r\n$-0\r\n"), uint8(5))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		whole, wholeRaw, errW := readAll(t, bytes.NewReader(data), DefaultLimits)
		rng := rand.New(rand.NewSource(int64(step)))
		split, _, errS := readAll(t, &randomChunks{data: data, rng: rng}, DefaultLimits)
		if len(whole) != len(split) {
			t.Fatalf("whole %d cmds (%v), split %d (%v)", len(whole), errW, len(split), errS)
		}
		for i := range whole {
			if strings.Join(whole[i], "\x00|") != strings.Join(split[i], "\x00|") {
				t.Fatalf("cmd %d differs", i)
			}
			var args [][]byte
			for _, a := range whole[i] {
				args = append(args, []byte(a))
			}
			if wholeRaw[i] != string(AppendCommand(nil, args...)) {
				t.Fatalf("cmd %d: raw %q is not the canonical form of %q", i, wholeRaw[i], whole[i])
			}
		}
	})
}

// TestRequestReaderAcceptsWhatRedisAccepts covers inputs Redis parses though
// they are not canonical RESP: it does not look at the byte after a CR, nor
// at the two bytes after an argument. Funnel accepts them too and forwards
// the canonical form.
func TestRequestReaderAcceptsWhatRedisAccepts(t *testing.T) {
	cases := []struct{ in, raw string }{
		{"*1\rX$4\r\nPING\r\n", "*1\r\n$4\r\nPING\r\n"},
		{"*1\r\n$4\rXPING\r\n", "*1\r\n$4\r\nPING\r\n"},
		{"*2\r\n$3\r\nGETxx$1\r\nk\r\n", "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"},
		{"*-5\r\n*1\r\n$4\r\nPING\r\n", "*1\r\n$4\r\nPING\r\n"},
		{"*1\r\n$0\r\n\r\n", "*1\r\n$0\r\n\r\n"},
	}
	for _, c := range cases {
		_, raws, err := readAll(t, strings.NewReader(c.in), DefaultLimits)
		if err != io.EOF || len(raws) != 1 || raws[0] != c.raw {
			t.Errorf("%q: got %q, %v; want %q", c.in, raws, err, c.raw)
		}
	}
}

// TestRequestReaderIncomplete covers inputs Redis keeps waiting on: a NUL
// before a line's end means the line never ends (strchr stops there), and
// nothing is decided before the CR of a header line arrives.
func TestRequestReaderIncomplete(t *testing.T) {
	for _, in := range []string{"PING\x00\r\n", "*1\x00\r\n", "*1\r\n$4\x00\r\nPING\r\n", "*1\r\nX", "*1\r", "*1\r\n$4\r\nPING\r"} {
		cmds, _, err := readAll(t, strings.NewReader(in), DefaultLimits)
		if err != io.EOF || len(cmds) != 0 {
			t.Errorf("%q: got %q, %v; want nothing yet", in, cmds, err)
		}
	}
}

// TestRequestReaderUnauthenticated checks Redis's limits before AUTH.
func TestRequestReaderUnauthenticated(t *testing.T) {
	l := DefaultLimits
	l.Unauthenticated = true
	for in, want := range map[string]string{
		"*11\r\n":                   "Protocol error: unauthenticated multibulk length",
		"*1\r\n$16385\r\n":          "Protocol error: unauthenticated bulk length",
		"*1\r\n$99999999999\r\n":    "Protocol error: invalid bulk length",
		"*2147483648\r\n":           "Protocol error: invalid multibulk length",
		"*99999999999999999999\r\n": "Protocol error: invalid multibulk length",
	} {
		_, _, err := readAll(t, strings.NewReader(in), l)
		if err == nil || err.Error() != want {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
	if cmds, _, err := readAll(t, strings.NewReader("*10\r\n"+strings.Repeat("$1\r\na\r\n", 10)), l); err != io.EOF || len(cmds) != 1 {
		t.Errorf("10 arguments: %v %v", cmds, err)
	}
}

// TestRequestReaderOwnsBigRequests checks that a large argument is read into
// a buffer of its own size and handed over, never copied, and that what
// follows it in the stream is still read.
func TestRequestReaderOwnsBigRequests(t *testing.T) {
	big := bytes.Repeat([]byte("v"), 1<<20)
	stream := AppendCommand(nil, []byte("SET"), []byte("k"), big, []byte("EX"), []byte("10"))
	stream = AppendCommand(stream, []byte("PING"))
	r := NewRequestReader(&randomChunks{data: stream, rng: rand.New(rand.NewSource(2))}, DefaultLimits)
	cmd, err := r.Read()
	if err != nil || !cmd.Owned || len(cmd.Args) != 5 || !bytes.Equal(cmd.Args[2], big) {
		t.Fatalf("first: owned=%v args=%d err=%v", cmd.Owned, len(cmd.Args), err)
	}
	if cap(cmd.Raw) > len(big)+2*bigSlack+64 {
		t.Errorf("buffer of %d bytes for a %d-byte request", cap(cmd.Raw), len(cmd.Raw))
	}
	kept := cmd.Raw
	next, err := r.Read()
	if err != nil || string(next.Args[0]) != "PING" {
		t.Fatalf("second: %q %v", next.Args, err)
	}
	if !bytes.Equal(kept, stream[:len(kept)]) {
		t.Error("the owned request was overwritten by the next read")
	}
}

func TestString2ll(t *testing.T) {
	for in, want := range map[string]bool{
		"0": true, "1": true, "-1": true, "9223372036854775807": true, "-9223372036854775808": true,
		"": false, "-": false, "-0": false, "00": false, "01": false, "+1": false, " 1": false, "1 ": false,
		"9223372036854775808": false, "-9223372036854775809": false, "1a": false,
	} {
		if _, ok := string2ll([]byte(in)); ok != want {
			t.Errorf("string2ll(%q) ok = %v, want %v", in, ok, want)
		}
	}
}

// TestCommandRebase checks that a copy of a command's bytes gives the same
// arguments, for multibulk, inline and re-encoded requests.
func TestCommandRebase(t *testing.T) {
	r := NewRequestReader(strings.NewReader("*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET a 'b c'\r\n*1\rX$4\r\nPING\r\n"), DefaultLimits)
	for {
		cmd, err := r.Read()
		if err != nil {
			break
		}
		raw := append([]byte(nil), cmd.Raw...)
		args := cmd.Rebase(raw, nil)
		for i := range args {
			if !bytes.Equal(args[i], cmd.Args[i]) || &args[i][0] != &raw[cap(raw)-cap(args[i])] {
				t.Errorf("%q: arg %d rebased to %q", cmd.Raw, i, args[i])
			}
		}
	}
}
