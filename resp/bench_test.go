package resp

import (
	"bytes"
	"fmt"
	"testing"
)

// loopReader serves the same bytes forever, so a benchmark measures parsing,
// not I/O.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.off:])
	l.off = (l.off + n) % len(l.data)
	return n, nil
}

func BenchmarkRequestReader(b *testing.B) {
	for _, size := range []int{16, 1024, 64 << 10} {
		b.Run(fmt.Sprintf("SET-%dB", size), func(b *testing.B) {
			var stream []byte
			for i := 0; i < 64; i++ {
				stream = AppendCommand(stream, []byte("SET"), []byte("key:000"), bytes.Repeat([]byte("v"), size))
			}
			r := NewRequestReader(&loopReader{data: stream}, DefaultLimits)
			b.SetBytes(int64(len(stream) / 64))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Read(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReplyScanner(b *testing.B) {
	cases := map[string][]byte{
		"status":     []byte("+OK\r\n"),
		"bulk-1KiB":  append(append([]byte("$1024\r\n"), bytes.Repeat([]byte("x"), 1024)...), "\r\n"...),
		"array-100":  bytes.Repeat([]byte("$5\r\nhello\r\n"), 100),
		"nested-3x3": []byte("*3\r\n*3\r\n:1\r\n:2\r\n:3\r\n*3\r\n:1\r\n:2\r\n:3\r\n*3\r\n:1\r\n:2\r\n:3\r\n"),
	}
	cases["array-100"] = append([]byte("*100\r\n"), cases["array-100"]...)
	for name, reply := range cases {
		b.Run(name, func(b *testing.B) {
			var s ReplyScanner
			b.SetBytes(int64(len(reply)))
			b.ReportAllocs()
			for b.Loop() {
				if n, err := s.Scan(reply); n != len(reply) || err != nil {
					b.Fatal(n, err)
				}
			}
		})
	}
}
