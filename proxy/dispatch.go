package proxy

import (
	"time"

	"github.com/funnel-proxy/funnel/resp"
)

// Dispatching is routing a command and sending it on. Exactly one goroutine
// dispatches a session's commands at any time, in arrival order: the reader,
// inline, in the common case; or, while a command waits for something that
// can take long (a lane connection, the client's in-flight commands to
// finish, a fetch, room in its in-flight window), a resumer goroutine. The
// reader then parks every later command instead of dispatching it, and
// keeps reading its socket. The resumer runs the wait, then dispatches the
// parked commands in order, and hands dispatching back to the reader when
// none are left. So the reader never waits on the upstream, and a client
// that leaves is noticed at once: its parked commands are cancelled unsent
// and its waits end.
//
// The hand-off goes through s.mu (parked and suspended), which also orders
// the client state the dispatcher owns (sticky, lease, multi, db ...)
// between the two goroutines.

// input queues cmd for its reply and dispatches it, or parks it. It reports
// whether it was the client's last command (QUIT, or a cross-protocol
// attack): the reader then reads no further.
func (s *session) input(cmd resp.Command) (last bool) {
	r := newRequest(s, cmd)
	last = isQuit(r.args[0]) || isCrossProtocol(r.args[0])
	if !s.out.push(r) {
		return true
	}
	// Only this goroutine suspends dispatching, so seen clear it stays
	// clear; the resumer clears it after dispatching, so the load also
	// orders the client state the resumer wrote before this dispatch.
	if s.suspended.Load() {
		s.mu.Lock()
		if s.suspended.Load() {
			s.parked = append(s.parked, r)
			s.mu.Unlock()
			return last
		}
		s.mu.Unlock()
	}
	s.route(r)
	return last
}

// offload runs wait, which may block, on a resumer goroutine, and makes the
// reader park the commands that come meanwhile. Called on the resumer
// already, it runs wait inline.
func (s *session) offload(wait func()) {
	if s.resuming {
		wait()
		return
	}
	s.mu.Lock()
	s.suspended.Store(true)
	s.mu.Unlock()
	s.srv.wg.Add(1)
	s.resumers.Add(1)
	go func() {
		defer s.srv.wg.Done()
		defer s.resumers.Done()
		defer s.srv.recoverPanic(s)
		s.resuming = true
		wait()
		s.resumeParked()
	}()
}

// resumeParked dispatches the parked commands in order, then hands
// dispatching back to the reader.
func (s *session) resumeParked() {
	for {
		s.mu.Lock()
		if len(s.parked) == 0 || s.isDead() {
			s.resuming = false
			s.suspended.Store(false)
			s.mu.Unlock()
			if s.isDead() {
				s.cancelParked()
			}
			return
		}
		r := s.parked[0]
		s.parked[0] = nil
		s.parked = s.parked[1:]
		s.mu.Unlock()
		s.route(r)
	}
}

// cancelParked answers every parked command with an error, unsent: its
// client is gone.
func (s *session) cancelParked() {
	s.mu.Lock()
	parked := s.parked
	s.parked = nil
	s.mu.Unlock()
	for _, r := range parked {
		r.Complete(nil, errSessionClosed)
	}
}

// awaitProgress waits until cond holds, waking as the client's upstream
// requests complete or wake closes. It reports false if the session died
// first. Only the resumer may call it.
func (s *session) awaitProgress(cond func() bool, wake <-chan struct{}) bool {
	for !cond() {
		s.waitingProgress.Store(true)
		if cond() { // a completion may have come before the flag was seen
			break
		}
		select {
		case <-s.progress:
		case <-wake:
		case <-s.dead:
			s.waitingProgress.Store(false)
			return false
		}
	}
	s.waitingProgress.Store(false)
	return true
}

// waitIdle waits until nothing of this client is in flight, so a command
// sent on another connection cannot overtake the client's earlier ones.
func (s *session) waitIdle() bool {
	return s.awaitProgress(func() bool { return s.upInFlight.Load() == 0 }, nil)
}

// admission says whether a client may send one more request upstream now,
// and if not, what it waits for.
type admission uint8

const (
	admitted     admission = iota
	overOwnShare           // its replies held and to come would pass its output limit: its own progress lets it in
	overMemory             // funnel's memory budget has no room for its next reply: others' progress lets it in
)

// admission tells whether the client may send one more request upstream
// now. Replies still to come count against the limits, at the client's
// average reply size: against its output limit (one request beyond it is
// let through, whose reply then closes a client that does not read), and
// against funnel's memory limit with every other client's held and
// expected bytes. A client holding nothing, with nothing in flight, is
// always admitted, so nobody starves behind the clients that hold memory.
// Until its first reply shows their size, a client has one request in
// flight at a time. So a client that pipelines a thousand reads of a huge
// value and never reads pulls little from the upstream, and other clients'
// replies on the same connection are not held up behind gigabytes.
func (s *session) admission() admission {
	inflight, held := s.upInFlight.Load(), s.pendingOut.Load()
	if inflight == 0 && held == 0 {
		return admitted
	}
	avg := s.avgReply.Load()
	switch {
	case avg == 0:
		if inflight == 0 {
			return admitted
		}
		return overOwnShare
	case held+inflight*avg > s.srv.live().outputLimit:
		return overOwnShare
	case !s.srv.mem.roomFor(avg):
		return overMemory
	}
	return admitted
}

// awaitAdmission waits, on the resumer, until the client is admitted. A
// client over its own share waits for its own progress: its requests
// completing, its replies written. One that waits for funnel's memory
// stands in the budget's line as well, so that a free wakes only the
// clients the room fits instead of every waiter; its own progress still
// lets it in once it holds nothing, even if its replies are larger than
// the whole budget and no room ever fits one. A client kept out for memoryWait is closed: it holds replies it
// does not read while others need the memory. It reports false if the
// session died.
func (s *session) awaitAdmission() bool {
	timer := time.NewTimer(memoryWait)
	defer timer.Stop()
	defer s.waitingProgress.Store(false)
	front := false // back in line at its front, if let in and beaten to the room
	for {
		why := s.admission()
		if why == admitted {
			return true
		}
		var roomMade <-chan struct{}
		leave := func(used bool) {}
		if why == overMemory {
			roomMade, leave = s.srv.mem.awaitRoom(s.avgReply.Load(), front)
		}
		s.waitingProgress.Store(true)
		if s.admission() == admitted { // progress came before the flag was seen
			leave(true)
			return true
		}
		select {
		case <-s.progress:
			front = false
		case <-roomMade:
			front = true
		case <-s.dead:
			leave(false)
			return false
		case <-timer.C:
			leave(false)
			s.kill(closedMemory)
			return false
		}
		admittedNow := s.admission() == admitted
		leave(admittedNow)
		if admittedNow {
			return true
		}
	}
}

func isQuit(name []byte) bool { return len(name) == 4 && equalFold(name, "quit") }

// isCrossProtocol reports whether a command is the POST or "Host:" line of
// an HTTP request, which Redis answers by closing the connection (a page
// in a browser can be made to send one to a local port). Like Redis's
// strcasecmp, the comparison stops at a NUL byte.
func isCrossProtocol(name []byte) bool {
	for i, c := range name {
		if c == 0 {
			name = name[:i]
			break
		}
	}
	return equalFold(name, "post") || equalFold(name, "host:")
}

// equalFold reports whether b equals the lower-case ASCII word, ignoring case.
func equalFold(b []byte, word string) bool {
	if len(b) != len(word) {
		return false
	}
	for i := range b {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != word[i] {
			return false
		}
	}
	return true
}
