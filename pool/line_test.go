package pool

import (
	"math/rand/v2"
	"testing"
)

// TestLineMatchesSlice runs random sequences of line operations (push,
// pushFront, pop, take, add, prepend) against a slice that models them:
// every line keeps its requests, once each, in order, and its count right.
func TestLineMatchesSlice(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var a, b line
		var ma, mb []*Request
		for step := range 200 {
			switch rng.IntN(7) {
			case 0, 1:
				r := &Request{}
				a.push(r)
				ma = append(ma, r)
			case 2:
				got := a.pop()
				var want *Request
				if len(ma) > 0 {
					want, ma = ma[0], ma[1:]
				}
				if got != want {
					t.Fatalf("round %d step %d: pop gave %p, want %p", round, step, got, want)
				}
			case 3: // b takes a whole, at its end
				b.add(a.take())
				mb, ma = append(mb, ma...), nil
			case 4: // a gets b back at its front
				a.prepend(b.take())
				ma, mb = append(mb, ma...), nil
			case 5:
				a, b, ma, mb = b, a, mb, ma
			case 6: // a request put back at the front
				r := &Request{}
				a.pushFront(r)
				ma = append([]*Request{r}, ma...)
			}
			check(t, a, ma)
			check(t, b, mb)
		}
	}
}

func check(t *testing.T, l line, want []*Request) {
	t.Helper()
	if l.n != len(want) {
		t.Fatalf("line counts %d, holds %d", l.n, len(want))
	}
	r := l.head
	for i, w := range want {
		if r != w {
			t.Fatalf("element %d is %p, want %p", i, r, w)
		}
		if i == len(want)-1 && l.tail != r {
			t.Fatalf("tail %p, want %p", l.tail, r)
		}
		r = r.lineNext
	}
	if r != nil || len(want) == 0 && (l.head != nil || l.tail != nil) {
		t.Fatal("line longer than its model")
	}
}
