package nbio

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// pair returns a connected pair of non-blocking stream sockets.
func pair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// TestReadWrite: what Write takes arrives, in order, through Read; an
// empty socket says EAGAIN, a hung-up one 0 with no error.
func TestReadWrite(t *testing.T) {
	a, b := pair(t)
	buf := make([]byte, 64)
	if n, err := Read(b, buf); n != 0 || err != unix.EAGAIN {
		t.Fatalf("empty socket: %d %v, want 0 EAGAIN", n, err)
	}
	if n, err := Write(a, []byte("hello")); n != 5 || err != nil {
		t.Fatalf("write: %d %v", n, err)
	}
	if n, err := Read(b, buf); n != 5 || err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read: %d %v %q", n, err, buf[:n])
	}
	unix.Close(a)
	if n, err := Read(b, buf); n != 0 || err != nil {
		t.Fatalf("after hang-up: %d %v, want 0 and no error", n, err)
	}
	if _, err := Read(-1, buf); err != unix.EBADF {
		t.Fatalf("bad descriptor: %v, want EBADF", err)
	}
}

// TestWriteStopsWhenFull: Write takes what a full socket takes, says
// EAGAIN, and every byte it counted arrives, in order.
func TestWriteStopsWhenFull(t *testing.T) {
	a, b := pair(t)
	msg := make([]byte, 8<<20) // far more than a socket buffer
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	n, err := Write(a, msg)
	if err != unix.EAGAIN || n <= 0 || n >= len(msg) {
		t.Fatalf("write to a full socket: %d %v, want a part of it and EAGAIN", n, err)
	}
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		m, err := Read(b, buf)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got.Write(buf[:m])
	}
	if !bytes.Equal(got.Bytes(), msg[:n]) {
		t.Fatalf("read %d bytes, not the %d Write counted", got.Len(), n)
	}
}

// TestPoll: Poll reports a readable socket at once and waits for nothing
// when none is.
func TestPoll(t *testing.T) {
	a, b := pair(t)
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, b, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(b)}); err != nil {
		t.Fatal(err)
	}
	events := make([]unix.EpollEvent, 4)
	if n, err := Poll(epfd, events); n != 0 || err != nil {
		t.Fatalf("nothing ready: %d %v", n, err)
	}
	if _, err := Write(a, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := Poll(epfd, events); n != 1 || err != nil || events[0].Fd != int32(b) || events[0].Events&unix.EPOLLIN == 0 {
		t.Fatalf("readable: %d %v %+v", n, err, events[0])
	}
}
