package resp

import (
	"errors"
	"testing"
)

// replySamples holds one reply of every RESP2 and RESP3 type, the seeds for
// the split-read tests and the fuzzer.
var replySamples = []string{
	"+OK\r\n",
	"-ERR wrong\r\n",
	":42\r\n",
	"$5\r\nhello\r\n",
	"$0\r\n\r\n",
	"$-1\r\n",
	"*-1\r\n",
	"*0\r\n",
	"*2\r\n$1\r\na\r\n*2\r\n:1\r\n*0\r\n",
	"*3\r\n$-1\r\n-ERR inner\r\n*1\r\n+x\r\n",
	"$4\r\na\r\nb\r\n",
	"_\r\n",
	",3.14\r\n",
	"#t\r\n",
	"(12345678901234567890\r\n",
	"!3\r\nerr\r\n",
	"=7\r\ntxt:abc\r\n",
	"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",
	"~2\r\n+a\r\n+b\r\n",
	">3\r\n+message\r\n+ch\r\n$2\r\nhi\r\n",
	"|1\r\n+key\r\n+val\r\n:5\r\n",
}

func TestReplyScannerWhole(t *testing.T) {
	for _, r := range replySamples {
		var s ReplyScanner
		n, err := s.Scan([]byte(r + "+NEXT\r\n"))
		if err != nil || n != len(r) {
			t.Errorf("%q: got %d, %v; want %d", r, n, err, len(r))
		}
	}
}

// TestReplyScannerSplit feeds every sample one byte at a time: no prefix may
// be reported complete, and the whole must be.
func TestReplyScannerSplit(t *testing.T) {
	for _, r := range replySamples {
		var s ReplyScanner
		for i := 1; i < len(r); i++ {
			if n, err := s.Scan([]byte(r[:i])); n != 0 || err != nil {
				t.Fatalf("%q prefix %d: got %d, %v", r, i, n, err)
			}
		}
		if n, err := s.Scan([]byte(r)); n != len(r) || err != nil {
			t.Fatalf("%q: got %d, %v", r, n, err)
		}
	}
}

func TestReplyScannerErrors(t *testing.T) {
	for _, r := range []string{"?x\r\n", "+OK\n", "$abc\r\n", "$3\r\nabcd\r\n", "*x\r\n", "$-2\r\n"} {
		var s ReplyScanner
		if _, err := s.Scan([]byte(r)); !errors.Is(err, ErrReplyProtocol) {
			t.Errorf("%q: got %v, want ErrReplyProtocol", r, err)
		}
	}
}

// FuzzReplyScanner checks that any split of a stream finds the same reply
// ends as scanning it whole, and that no input panics.
func FuzzReplyScanner(f *testing.F) {
	for i, r := range replySamples {
		f.Add([]byte(r+replySamples[(i+1)%len(replySamples)]), uint8(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		var whole ReplyScanner
		var ends []int
		for off := 0; off < len(data); {
			n, err := whole.Scan(data[off:])
			if err != nil || n == 0 {
				break
			}
			off += n
			ends = append(ends, off)
		}
		var split ReplyScanner
		chunk := int(step%7) + 1
		var got []int
		start := 0
		for end := chunk; start < len(data); end += chunk {
			if end > len(data) {
				end = len(data)
			}
			n, err := split.Scan(data[start:end])
			if err != nil {
				break
			}
			for n > 0 {
				start += n
				got = append(got, start)
				n, err = split.Scan(data[start:end])
				if err != nil {
					n = 0
				}
			}
			if end == len(data) {
				break
			}
		}
		for i := range got {
			if i >= len(ends) || got[i] != ends[i] {
				t.Fatalf("split ends %v, whole ends %v", got, ends)
			}
		}
	})
}
