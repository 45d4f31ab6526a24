package proxy

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/funnel-proxy/funnel/internal/nbio"
)

// A loop reads the sockets of its clients: one goroutine, one epoll set, no
// goroutine and no buffer per idle client. Each pass takes every ready
// socket, reads it once (one read per client per pass, as Redis does, so a
// client that streams cannot starve the others), and hands the commands to
// the session's dispatcher (session.readable), which never waits. A client
// whose socket would not take its replies gets EPOLLOUT in the same set
// (output.writable).
//
// The loop does not block in epoll_wait itself. Its epoll set is a file
// descriptor the Go runtime's own poller watches, and the loop parks like
// any goroutine reading a socket until the set has something ready; then it
// takes everything ready with a non-blocking epoll_wait. So no OS thread
// sits in a system call holding a P, the runtime needs no hand-off to run
// the upstream side meanwhile, and a stop-the-world finds the loop at an
// ordinary safe point.
//
// Only the loop closes a client's socket (on a closeClient task), so a
// descriptor number is never reused while the loop may still read it.
// Other goroutines reach the loop through tasks, woken by an eventfd.
type loop struct {
	srv    *Server
	epfd   int
	wakefd int
	// file is epfd as the runtime's poller sees it; raw parks the loop on it.
	file *os.File
	raw  syscall.RawConn
	// passFn is pass as a func value, made once.
	passFn func(uintptr) bool
	events [128]unix.EpollEvent
	// clients holds each open client's session by its socket's descriptor.
	clients []*session
	// again holds the clients to read next pass without an event: their
	// last read filled its buffer, or they hung up and their end of stream
	// is not read yet. The edge-triggered set does not report them again.
	again, spareAgain []*session
	// passes counts passes, so a client the pass read on an event is not
	// read again from the again list in the same pass.
	passes uint64

	stopped bool
	done    chan struct{}

	mu    sync.Mutex
	tasks []loopTask
	spare []loopTask
	// failed is set, under mu, once the loop cannot go on: tasks are then
	// carried out by whoever posts them, so every session still ends.
	failed bool
	// woken is set while a wake-up is on its way, so a burst of tasks
	// costs one eventfd write.
	woken atomic.Bool
}

// taskKind says what a loopTask asks of the loop.
type taskKind uint8

const (
	addClient    taskKind = iota // start reading a new client
	resumeClient                 // read again after a pause (err: why the pause ended badly)
	drainClient                  // shutdown: read no more, close after the last reply
	closeClient                  // the session is dead: forget its socket and close it
	stopLoop                     // every client is gone: end the loop
)

type loopTask struct {
	kind taskKind
	s    *session
	err  error
}

func newLoop(srv *Server) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	l := &loop{srv: srv, epfd: epfd, wakefd: wakefd, done: make(chan struct{})}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		l.closeFDs()
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		l.closeFDs()
		return nil, os.NewSyscallError("fcntl", err)
	}
	// A non-blocking descriptor given to os.NewFile joins the runtime's poller.
	l.file = os.NewFile(uintptr(epfd), "funnel-epoll")
	if l.raw, err = l.file.SyscallConn(); err != nil {
		l.closeFDs()
		return nil, err
	}
	l.passFn = l.pass
	return l, nil
}

func (l *loop) closeFDs() {
	unix.Close(l.wakefd)
	if l.file != nil {
		l.file.Close()
	} else {
		unix.Close(l.epfd)
	}
}

// run is the loop's goroutine.
func (l *loop) run() {
	defer close(l.done)
	defer l.closeFDs()
	for !l.stopped {
		if err := l.raw.Read(l.passFn); err != nil {
			l.srv.log.Error("client event loop failed; its clients are closed", "err", err)
			l.failAll()
			return
		}
	}
}

// pass handles everything ready now. It reports false, parking the loop
// until the set is ready again, once it has taken everything the set had
// and no client is left to read again. Every watch is edge-triggered
// (the eventfd's too), so what the pass took leaves the set's ready list,
// and anything that comes during the pass or after makes the set ready
// again, which the runtime's poller reports to the parked loop. That
// saves the epoll_wait that would find nothing before parking.
func (l *loop) pass(uintptr) bool {
	n, _ := nbio.Poll(l.epfd, l.events[:]) // fails only once the set is closed: 0 events
	if n == 0 && len(l.again) == 0 {
		return l.stopped
	}
	l.passes++
	if l.woken.Load() {
		// Tasks first, whatever the order of the events: under a flood of
		// events the wake-up's may come late, and closes and resumes wait.
		l.runTasks()
	}
	for i := range n {
		ev := l.events[i]
		fd := int(ev.Fd)
		if fd == l.wakefd {
			// Already run at the pass's start unless posted since: the
			// eventfd holds a count only while woken is set.
			if l.woken.Load() {
				l.runTasks()
			}
			continue
		}
		if fd >= len(l.clients) || l.clients[fd] == nil {
			continue // closed earlier in this pass
		}
		s := l.clients[fd]
		if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			s.sock.peerClosed = true
		}
		s.sock.readPass = l.passes
		s.ready(ev.Events)
		l.readAgainLater(s)
	}
	again := l.again
	l.again = l.spareAgain[:0]
	for i, s := range again {
		s.sock.againQueued = false
		if l.clients[s.sock.fd] == s {
			if s.sock.readPass != l.passes { // one read per client per pass
				s.readAgain()
			}
			l.readAgainLater(s)
		}
		again[i] = nil
	}
	l.spareAgain = again[:0]
	return l.stopped || n == len(l.events) || len(l.again) > 0
}

// readAgainLater puts s in the list to read next pass if it is still
// reading and its socket may hold more: the last read filled the buffer,
// or the client hung up and its end of stream is not read yet.
func (l *loop) readAgainLater(s *session) {
	if (s.sock.more || s.sock.peerClosed) && !s.sock.againQueued && !s.isDead() &&
		(s.rs == readingCommands || s.rs == readSinking) {
		s.sock.againQueued = true
		l.again = append(l.again, s)
	}
}

// post hands t to the loop.
func (l *loop) post(t loopTask) {
	l.mu.Lock()
	if l.failed {
		l.mu.Unlock()
		l.failedTask(t)
		return
	}
	l.tasks = append(l.tasks, t)
	l.mu.Unlock()
	if !l.woken.Swap(true) {
		var one = [8]byte{1}
		_, _ = nbio.Write(l.wakefd, one[:])
	}
}

func (l *loop) runTasks() {
	var sink [8]byte
	_, _ = nbio.Read(l.wakefd, sink[:])
	l.woken.Store(false) // after the read: a task posted from here on writes again
	l.mu.Lock()
	tasks := l.tasks
	l.tasks, l.spare = l.spare[:0], nil
	l.mu.Unlock()
	for i, t := range tasks {
		switch t.kind {
		case addClient:
			l.add(t.s)
		case resumeClient:
			t.s.sock.readPass = l.passes
			t.s.resume(t.err)
			l.readAgainLater(t.s)
		case drainClient:
			t.s.drainReading()
		case closeClient:
			l.remove(t.s)
		case stopLoop:
			l.stopped = true
		}
		tasks[i] = loopTask{}
	}
	l.mu.Lock()
	if l.spare == nil {
		l.spare = tasks[:0]
	}
	l.mu.Unlock()
}

func (l *loop) add(s *session) {
	fd := s.sock.fd
	if s.isDead() {
		l.close(s)
		return
	}
	for fd >= len(l.clients) {
		l.clients = append(l.clients, make([]*session, len(l.clients)+64)...)
	}
	l.clients[fd] = s
	if err := s.sock.register(); err != nil {
		l.srv.log.Warn("client not served: epoll_ctl failed", "id", s.id, "err", err)
		s.kill(closedEventLoop)
		return
	}
	// Anything the client sent before it was registered is reported now:
	// adding a socket to the set reports what is pending, edge-triggered
	// or not.
}

// remove forgets a dead session's socket, closes it, and cleans the
// session up (see close).
func (l *loop) remove(s *session) {
	if fd := s.sock.fd; fd < len(l.clients) && l.clients[fd] == s {
		l.clients[fd] = nil
	}
	l.close(s)
}

func (l *loop) close(s *session) {
	if !s.sock.close(&s.out) {
		return
	}
	s.reader.Close()
	// Cleaning up waits only for a resumer that is dispatching the
	// session's commands; without one it is quick and runs here, so a
	// thousand clients leaving at once do not start a thousand goroutines.
	if s.suspended.Load() {
		go s.finish() // counted in srv.wg since accept
	} else {
		s.finish()
	}
}

func (l *loop) hasFailed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// failAll closes every client of a loop that cannot go on, and has the
// tasks posted from now on carried out by their posters.
func (l *loop) failAll() {
	l.mu.Lock()
	l.failed = true
	tasks := l.tasks
	l.tasks = nil
	l.mu.Unlock()
	for _, s := range l.clients {
		if s != nil {
			s.kill(closedEventLoop)
			l.close(s)
		}
	}
	clear(l.clients)
	for _, t := range tasks {
		l.failedTask(t)
	}
}

// failedTask is what a task comes to once the loop failed: a new client is
// closed, a dead one's socket closed; nothing is read any more. sock.close
// makes closing twice harmless.
func (l *loop) failedTask(t loopTask) {
	switch t.kind {
	case addClient:
		t.s.kill(closedEventLoop)
		l.close(t.s)
	case closeClient:
		l.close(t.s)
	}
}
