package resp

import (
	"bytes"
	"strings"
	"testing"
)

// TestElements: the elements of an aggregate come back whole, nested ones
// included, and anything that is not a complete array, set or push gives
// ok false.
func TestElements(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want []string // nil: ok false
	}{
		{"*2\r\n$1\r\nk\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n", []string{"$1\r\nk\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"}},
		{"*2\r\n$1\r\nk\r\n*1\r\n*2\r\n$1\r\nm\r\n,1.5\r\n", []string{"$1\r\nk\r\n", "*1\r\n*2\r\n$1\r\nm\r\n,1.5\r\n"}},
		{"~2\r\n:1\r\n+x\r\n", []string{":1\r\n", "+x\r\n"}},
		{">1\r\n_\r\n", []string{"_\r\n"}},
		{"*0\r\n", []string{}},
		{"*-1\r\n", nil},
		{"_\r\n", nil},
		{"$1\r\nk\r\n", nil},
		{"*2\r\n$1\r\nk\r\n", nil},            // cut short
		{"*1\r\n$5\r\nab\r\n", nil},           // element cut short
		{"*99999999999\r\n:1\r\n", nil},       // a count far beyond the bytes
		{"*2\r\n$1\r\nk\r\n" + "?x\r\n", nil}, // not RESP
	} {
		got, ok := Elements([]byte(tc.raw))
		if tc.want == nil {
			if ok {
				t.Errorf("%q: ok with %q, want not ok", tc.raw, got)
			}
			continue
		}
		if !ok || len(got) != len(tc.want) {
			t.Errorf("%q: %q %v, want %q", tc.raw, got, ok, tc.want)
			continue
		}
		for i := range got {
			if string(got[i]) != tc.want[i] {
				t.Errorf("%q: element %d = %q, want %q", tc.raw, i, got[i], tc.want[i])
			}
		}
	}
	// A long array, as BLMPOP with a big COUNT replies.
	raw := "*1000\r\n" + strings.Repeat("$3\r\nabc\r\n", 1000)
	if got, ok := Elements([]byte(raw)); !ok || len(got) != 1000 {
		t.Fatalf("1000 elements: %d %v", len(got), ok)
	}
}

// FuzzElements: Elements never panics, and what it returns is the reply
// after its header, cut into whole replies.
func FuzzElements(f *testing.F) {
	for _, seed := range []string{
		"*2\r\n$1\r\nk\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n", "~2\r\n:1\r\n+x\r\n", "*-1\r\n", "*2\r\n$1\r\nk\r\n",
		"*1\r\n%1\r\n+a\r\n*2\r\n:1\r\n:2\r\n", ">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		elements, ok := Elements(raw)
		if !ok {
			return
		}
		header := bytes.Index(raw, crlf) + 2
		var joined []byte
		for _, e := range elements {
			var scan ReplyScanner
			if n, err := scan.Scan(e); err != nil || n != len(e) {
				t.Fatalf("element %q is not one whole reply", e)
			}
			joined = append(joined, e...)
		}
		if !bytes.HasPrefix(raw[header:], joined) {
			t.Fatalf("elements %q are not the reply's bytes after its header", elements)
		}
	})
}
