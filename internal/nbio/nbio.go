// Package nbio reads and writes non-blocking descriptors with raw system
// calls: calls the Go scheduler is not told about.
//
// Go's usual system call path (syscall.Syscall, and so unix.Read, net.Conn)
// tells the scheduler a goroutine is entering the kernel, so that its P
// can be handed to other work if the call blocks. On a descriptor that
// never blocks that only costs. With funnel's default of one P, every
// request lets the P go idle while funnel waits for the network; the
// runtime's monitor thread (sysmon) then sleeps until the next system
// call entry wakes it (a futex wake-up and a thread switch), after which
// it polls every 20 µs until the P is idle again; and a write on a busy
// loopback that takes longer than that tick has its P taken away and
// another thread started to poll the network. A raw call does none of
// that: the goroutine keeps its P for the few microseconds the kernel
// works, as it would for any other code.
//
// Only for descriptors in non-blocking mode: a raw call that blocked
// would hold its P, and stop the garbage collector, until it returned.
package nbio

import (
	"io"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read reads fd once into b. It retries a call interrupted by a signal;
// an empty socket gives unix.EAGAIN, the end of stream 0 and no error.
func Read(fd int, b []byte) (int, error) {
	return call(unix.SYS_READ, fd, bufPointer(b), len(b))
}

// Write writes as much of b as fd takes now. It retries interrupted and
// short writes; when fd takes no more, it returns what it wrote and
// unix.EAGAIN.
func Write(fd int, b []byte) (int, error) {
	written := 0
	for written < len(b) {
		n, err := call(unix.SYS_WRITE, fd, bufPointer(b[written:]), len(b)-written)
		if err != nil {
			return written, err
		}
		if n == 0 {
			return written, io.ErrShortWrite // a socket never takes nothing without EAGAIN
		}
		written += n
	}
	return written, nil
}

// Poll is epoll_wait(2) on epfd with a zero timeout: it returns at once
// with the events ready now, at most len(events).
func Poll(epfd int, events []unix.EpollEvent) (int, error) {
	return call(unix.SYS_EPOLL_PWAIT, epfd, unsafe.Pointer(&events[0]), len(events))
}

// call makes the raw system call trap on fd with a buffer of n bytes (or
// n events) at p, and epoll_pwait's other arguments 0 (no timeout, no
// signal mask), again while a signal interrupts it. p stays a pointer
// until the call itself: a uintptr made earlier would not follow the
// buffer if the goroutine's stack moved in between.
func call(trap uintptr, fd int, p unsafe.Pointer, n int) (int, error) {
	for {
		r, _, errno := unix.RawSyscall6(trap, uintptr(fd), uintptr(p), uintptr(n), 0, 0, 0)
		switch errno {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return 0, errno
	}
}

func bufPointer(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}
