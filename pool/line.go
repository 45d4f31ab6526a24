package pool

// line is a first-in first-out list of requests, linked through the
// requests themselves, so that a whole line moves between goroutines with
// one lock taken instead of a channel operation per request. The zero line
// is empty. A request is in at most one line at a time.
type line struct {
	head, tail *Request
	n          int
}

// push adds r at the end.
func (l *line) push(r *Request) {
	r.lineNext = nil
	if l.tail == nil {
		l.head = r
	} else {
		l.tail.lineNext = r
	}
	l.tail = r
	l.n++
}

// pushFront adds r at the front.
func (l *line) pushFront(r *Request) {
	r.lineNext = l.head
	l.head = r
	if l.tail == nil {
		l.tail = r
	}
	l.n++
}

// pop takes the first request off, or returns nil when l is empty.
func (l *line) pop() *Request {
	r := l.head
	if r == nil {
		return nil
	}
	l.head = r.lineNext
	if l.head == nil {
		l.tail = nil
	}
	r.lineNext = nil
	l.n--
	return r
}

// take moves every request out of l, in order, and returns them.
func (l *line) take() line {
	all := *l
	*l = line{}
	return all
}

// add moves every request of o to the end of l.
func (l *line) add(o line) {
	if o.head == nil {
		return
	}
	if l.tail == nil {
		l.head = o.head
	} else {
		l.tail.lineNext = o.head
	}
	l.tail = o.tail
	l.n += o.n
}

// prepend moves every request of o to the front of l.
func (l *line) prepend(o line) {
	if o.head == nil {
		return
	}
	o.add(*l)
	*l = o
}
