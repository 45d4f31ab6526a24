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
		"*1\r\n$3\r\nGETX\r\n":                 "Protocol error: invalid bulk length",
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
// panics and parses to the same commands as read whole.
func FuzzRequestReader(f *testing.F) {
	f.Add([]byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n"), uint8(3))
	f.Add([]byte("SET a \"\\x41b\" 'c'\n*1\r\n$4\r\nPING\r\n"), uint8(1))
	f.Add([]byte("*1\r\n$-1\r\n"), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		whole, _, errW := readAll(t, bytes.NewReader(data), DefaultLimits)
		rng := rand.New(rand.NewSource(int64(step)))
		split, _, errS := readAll(t, &randomChunks{data: data, rng: rng}, DefaultLimits)
		if len(whole) != len(split) {
			t.Fatalf("whole %d cmds (%v), split %d (%v)", len(whole), errW, len(split), errS)
		}
		for i := range whole {
			if strings.Join(whole[i], "\x00|") != strings.Join(split[i], "\x00|") {
				t.Fatalf("cmd %d differs", i)
			}
		}
	})
}
