package proxy

import (
	"errors"
	"io"

	"github.com/funnel-proxy/funnel/resp"
	"golang.org/x/sys/unix"
)

// Reading a client, on its loop: the commands one read brings are input
// in order (session.input); reading pauses while the client may not send
// more (backpressure), and after its last command (QUIT, a protocol error)
// the socket is only watched for the client's hang-up.

// readState is where reading a client stands.
type readState uint8

const (
	readingCommands readState = iota // reading and dispatching its commands
	readPaused                       // waiting for room or memory; a resumeClient task goes on
	readSinking                      // after QUIT or a protocol error: reading only to notice a hang-up
	readStopped                      // shutdown: reading nothing more, waiting for the last reply
)

// ready handles what the loop saw on the socket: room to write, commands
// to read, or a hang-up.
func (s *session) ready(events uint32) {
	defer s.srv.recoverPanic(s)
	hangup := events&(unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0
	if events&unix.EPOLLOUT != 0 || hangup {
		s.out.writable()
	}
	if events&unix.EPOLLIN == 0 && !hangup {
		return
	}
	if !s.readSocket() {
		// Not reading: only a hang-up or an error is reported. The client
		// is gone: as when it hangs up while read, its replies are dropped.
		s.kill(closedByClient)
	}
}

// readAgain reads a socket the loop must read without an event (see
// loop.again).
func (s *session) readAgain() {
	defer s.srv.recoverPanic(s)
	s.readSocket()
}

// readSocket reads the socket as the reading state says: commands, or
// what a client sends after its last one. It reports false when the
// session is not reading (paused or stopped).
func (s *session) readSocket() bool {
	switch s.rs {
	case readingCommands:
		s.readCommands()
	case readSinking:
		s.sink()
	default:
		return false
	}
	return true
}

// readCommands reads the socket once and inputs every command complete in
// the buffer, until it needs more bytes, the session must wait (room,
// memory), or reading ends (QUIT, a protocol error, the client leaving,
// shutdown).
func (s *session) readCommands() {
	s.sock.startPass()
	for !s.isDead() {
		if s.draining.Load() {
			s.stopReading()
			return
		}
		if int(s.out.queued.Load()) >= s.srv.opts.MaxPipeline {
			s.endBatch()
			s.pauseForRoom()
			return
		}
		cmd, err := s.reader.Read()
		if err != nil {
			s.endBatch()
			s.readFailed(err)
			return
		}
		s.batching.Store(true)
		last := s.input(cmd)
		if last || s.reader.Buffered() == 0 {
			s.endBatch()
		}
		if last {
			s.startSinking()
			return
		}
	}
}

// endBatch ends the batch of commands one read brought (see batching): it
// writes the replies that waited for it. The reader calls it before each
// read.
func (s *session) endBatch() {
	if s.batching.Swap(false) {
		s.out.kick(true)
	}
}

// pauseForRoom stops reading the client while it has MaxPipeline commands
// without replies, as backpressure. Nothing waits for it: the reply that
// makes room, or a drain, posts the resume (roomMade), so ten thousand
// paused clients cost no goroutine.
func (s *session) pauseForRoom() {
	s.rs = readPaused
	s.sock.setReading(false)
	s.awaitingRoom.Store(true)
	// Room made before the flag was set found nothing to resume.
	if s.hasRoom() || s.draining.Load() {
		s.roomMade()
	}
}

// pauseForMemory stops reading the client while funnel is at its memory
// limit; the budget posts the resume when memory is freed, or with
// errMemory after memoryWait (memoryBudget.pauseReading).
func (s *session) pauseForMemory() {
	s.rs = readPaused
	s.sock.setReading(false)
	s.srv.mem.pauseReading(s)
}

// resume goes on reading after a pause; err is why the wait failed.
func (s *session) resume(err error) {
	if s.rs != readPaused || s.isDead() {
		return
	}
	s.rs = readingCommands
	if err != nil {
		s.readFailed(err)
		return
	}
	s.sock.setReading(true)
	s.readCommands()
}

// readFailed handles a read that returned no command: the socket has no
// more for now, the session must wait for memory, a protocol error gets
// Redis's reply and closes, anything else is the client leaving.
func (s *session) readFailed(err error) {
	if err == errWouldBlock { // the common case, first: errors.As would allocate
		s.reader.ReleaseIdle()
		return
	}
	switch {
	case errors.Is(err, errMemoryFull):
		s.pauseForMemory()
	case isProtocolError(err):
		s.srv.countError(errClientProtocol)
		s.queueFinal(resp.AppendError(nil, "ERR "+err.Error()), closedProtocol)
		s.startSinking()
	case errors.Is(err, errMemory):
		s.queueFinal(resp.AppendError(nil, "ERR "+err.Error()), closedMemory)
		s.startSinking()
	default:
		if !errors.Is(err, io.EOF) {
			s.srv.log.Debug("client read", "id", s.id, "err", err)
		}
		// As Redis does when a client hangs up: drop it at once, replies
		// still due included, and unblock its blocking command. Its
		// buffer goes back now, not when the loop gets to the close: a
		// thousand clients leaving at once hold no thousand buffers.
		s.reader.Close()
		s.kill(closedByClient)
	}
}

func isProtocolError(err error) bool {
	var pe *resp.ProtocolError
	return errors.As(err, &pe)
}

// drainReading is Shutdown's request: read no new command, and close once
// every reply to what was read is written. A paused session does so when
// it resumes.
func (s *session) drainReading() {
	switch s.rs {
	case readingCommands:
		s.stopReading()
	case readSinking:
		s.out.drainThenClose()
	}
}

func (s *session) stopReading() {
	s.rs = readStopped
	s.sock.setReading(false)
	s.out.drainThenClose()
}

// startSinking follows QUIT or a protocol error: like Redis, funnel reads
// no further command, but it still watches the socket, so a client that
// hangs up while its QUIT waits behind a blocked command is noticed. The
// output closes the connection after the last reply.
func (s *session) startSinking() {
	s.rs = readSinking
	s.reader.Close() // what was sent after the last command is never read
	s.sock.setReading(true)
}

// sink reads and drops what a client sends after its last command; at its
// hang-up, the client is gone.
func (s *session) sink() {
	var sink [4096]byte
	if _, err := s.sock.read(sink[:]); err != nil && !errors.Is(err, errWouldBlock) {
		s.kill(closedByClient)
	}
}
