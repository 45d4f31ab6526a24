package proxy

import (
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/funnel-proxy/funnel/resp"
)

// TestOneReadPerPass: however much a client has sent, a pass of the loop
// reads its socket once (one buffer): the reader then says the pass is
// over, the socket is marked to be read again, and the next pass goes on
// where this one stopped, losing nothing. It is what keeps a client that
// never stops sending from holding the loop (see also
// TestStreamingClientsCannotStarveOthers).
func TestOneReadPerPass(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	var readBytes atomic.Int64
	sock := &clientSocket{fd: fds[0], readBytes: &readBytes}
	reader := resp.NewRequestReader(sock, resp.DefaultLimits)

	const sent = 20_000
	stream := []byte(strings.Repeat("PING\r\n", sent))
	for off := 0; off < len(stream); {
		n, err := unix.Write(fds[1], stream[off:])
		if err != nil {
			t.Fatalf("writing the client's commands: %v", err)
		}
		off += n
	}

	total, passes := 0, 0
	for total < sent {
		passes++
		if passes > sent {
			t.Fatalf("%d of %d commands read after %d passes", total, sent, passes)
		}
		sock.startPass()
		reads, before := 0, readBytes.Load()
		for {
			cmd, err := reader.Read()
			if err != nil {
				if err != errWouldBlock {
					t.Fatalf("pass %d: %v", passes, err)
				}
				break
			}
			if string(cmd.Args[0]) != "PING" {
				t.Fatalf("pass %d: read %q", passes, cmd.Args[0])
			}
			total++
			reads++
		}
		got := readBytes.Load() - before
		if got > int64(reader.Size()) {
			t.Fatalf("pass %d read %d bytes, more than one buffer (%d)", passes, got, reader.Size())
		}
		if total < sent && !sock.more {
			t.Fatalf("pass %d stopped with %d commands left but did not mark the socket to be read again", passes, sent-total)
		}
	}
	if total != sent || passes < 2 {
		t.Fatalf("%d commands in %d passes, want %d in several", total, passes, sent)
	}
}
