package pool

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestRequestWriterDelivers: bursts larger than a socket buffer arrive
// whole and in order while the peer reads slowly (the writer waits for
// room in the poller), and the bytes are counted.
func TestRequestWriterDelivers(t *testing.T) {
	c, s := tcpPair(t)
	// Small socket buffers, so that the writer fills them and waits.
	_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
	_ = s.(*net.TCPConn).SetReadBuffer(16 << 10)
	var counted atomic.Int64
	w := newRequestWriter(c, 5*time.Second, &counted)
	if w.raw == nil {
		t.Fatal("a TCP connection must be written raw")
	}
	var sent bytes.Buffer
	got := make(chan []byte)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 16<<10)
		for {
			n, err := s.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				got <- b.Bytes()
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	for i := range 20 {
		chunk := bytes.Repeat([]byte{byte('a' + i)}, 1+i*15_000)
		if n, err := w.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("write %d: %d %v", i, n, err)
		}
		sent.Write(chunk)
	}
	c.Close()
	if !bytes.Equal(<-got, sent.Bytes()) {
		t.Fatal("the peer did not read what was written, in order")
	}
	if counted.Load() != int64(sent.Len()) {
		t.Fatalf("counted %d bytes, wrote %d", counted.Load(), sent.Len())
	}
}

// TestRequestWriterTimesOut: a peer that never reads fails the write by
// the deadline, with a timeout error that says what it was.
func TestRequestWriterTimesOut(t *testing.T) {
	c, _ := tcpPair(t)
	var counted atomic.Int64
	w := newRequestWriter(c, 200*time.Millisecond, &counted)
	start := time.Now()
	n, err := w.Write(make([]byte, 64<<20))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("write to a peer that never reads: %v, want a timeout", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("the timeout came after %v", waited)
	}
	if !strings.HasPrefix(err.Error(), "write tcp ") {
		t.Fatalf("error %q does not say it was a write", err)
	}
	if n <= 0 || int64(n) != counted.Load() {
		t.Fatalf("wrote %d, counted %d", n, counted.Load())
	}
}

// TestRequestWriterBrokenPeer: a write to a connection the peer reset
// fails with the socket's error rather than hanging.
func TestRequestWriterBrokenPeer(t *testing.T) {
	c, s := tcpPair(t)
	_ = s.(*net.TCPConn).SetLinger(0)
	s.Close() // RST
	var counted atomic.Int64
	w := newRequestWriter(c, 5*time.Second, &counted)
	var err error
	for range 100 {
		if _, err = w.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("writes to a reset connection: %v, want the socket's error", err)
	}
}
