package proxy

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/metrics"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// TestIdleClientsCostNoGoroutineNorBuffer opens 300 clients that each send
// one command and go quiet: funnel starts no goroutine for them and holds
// no read or write buffer, and each is still served when it speaks again.
func TestIdleClientsCostNoGoroutineNorBuffer(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	dialRaw(t, f.Addr).do("PING") // the loop and the pool are up
	before := runtime.NumGoroutine()
	const n = 300
	big := strings.Repeat("x", 10<<10)
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = dialRaw(t, f.Addr)
		if got := conns[i].do("SET", fmt.Sprint("idle:", i), "v"); got != "+OK\r\n" {
			t.Fatalf("SET: %q", got)
		}
		if i%3 == 0 { // a reply of 10 KiB once: its buffer goes back too
			if got := conns[i].do("ECHO", big); got != fmt.Sprintf("$%d\r\n%s\r\n", len(big), big) {
				t.Fatalf("ECHO: %d bytes back", len(got))
			}
		}
	}
	waitUntil(t, 5*time.Second, "every client's session", func() bool { return f.Server.sessionCount() == n+1 })
	// Goroutines that end on their own (a pool writer's flush, timers)
	// may come and go; a goroutine per client would add 300.
	if extra := runtime.NumGoroutine() - before; extra > 30 {
		t.Fatalf("%d more goroutines for %d idle clients", extra, n)
	}
	// Read buffers are charged to the memory budget while held (the
	// reader is the loop's to look at, the budget anyone's).
	if held := f.Metrics.Buffered.Load(); held >= resp.InitialBuffer {
		t.Fatalf("%d bytes of buffers held for idle clients", held)
	}
	for _, s := range f.Server.sessionsSnapshot() {
		s.out.mu.Lock()
		outCap := cap(s.out.buf)
		s.out.mu.Unlock()
		if outCap > smallOutBuf {
			t.Fatalf("idle client %d holds a %d-byte write buffer", s.id, outCap)
		}
	}
	for i, c := range conns {
		if got := c.do("GET", fmt.Sprint("idle:", i)); got != "$1\r\nv\r\n" {
			t.Fatalf("GET after idling: %q", got)
		}
	}
}

// TestPipelinePausesAndResumes sends far more commands at once than
// MaxPipeline lets funnel hold, behind a BLPOP that holds their replies
// back for a while: funnel holds exactly MaxPipeline of them (it pauses
// reading, never holding more), resumes when the BLPOP ends, and every
// reply comes, in order.
func TestPipelinePausesAndResumes(t *testing.T) {
	const maxPipeline = 8
	f := startFunnel(t, Options{MaxPipeline: maxPipeline}, pool.Options{})
	c := dialRaw(t, f.Addr)
	const n = 2000
	var b strings.Builder
	b.WriteString("*3\r\n$5\r\nBLPOP\r\n$7\r\npause:q\r\n$3\r\n0.3\r\n")
	for i := range n {
		fmt.Fprintf(&b, "*2\r\n$4\r\nECHO\r\n$%d\r\n%d\r\n", len(fmt.Sprint(i)), i)
	}
	go func() { _, _ = c.conn.Write([]byte(b.String())) }()
	waitUntil(t, 5*time.Second, "the client's session", func() bool { return f.Server.sessionCount() == 1 })
	s := f.Server.sessionsSnapshot()[0]
	held := int32(0)
	for start := time.Now(); time.Since(start) < 200*time.Millisecond; time.Sleep(time.Millisecond) {
		held = max(held, s.out.queued.Load())
	}
	if held != maxPipeline {
		t.Fatalf("funnel held up to %d commands of a client blocked behind a BLPOP, want MaxPipeline (%d)", held, maxPipeline)
	}
	if got := c.reply(); got != "*-1\r\n" {
		t.Fatalf("BLPOP: %q", got)
	}
	for i := range n {
		want := fmt.Sprintf("$%d\r\n%d\r\n", len(fmt.Sprint(i)), i)
		if got := c.reply(); got != want {
			t.Fatalf("reply %d: %q, want %q", i, got, want)
		}
	}
}

// TestHangupWhilePausedIsNoticed: a client whose reading is paused (its
// queue is full behind a blocked BLPOP) and that hangs up is dropped at
// once, and its BLPOP ends upstream: it pops nothing later.
func TestHangupWhilePausedIsNoticed(t *testing.T) {
	f := startFunnel(t, Options{MaxPipeline: 4}, pool.Options{})
	c := dialRaw(t, f.Addr)
	var b strings.Builder
	b.WriteString("*3\r\n$5\r\nBLPOP\r\n$8\r\npaused:q\r\n$2\r\n30\r\n")
	for range 20 {
		b.WriteString("*1\r\n$4\r\nPING\r\n")
	}
	c.write([]byte(b.String()))
	waitUntil(t, 5*time.Second, "the BLPOP to block", func() bool { return f.Server.blockedClients.Load() == 1 })
	c.conn.Close()
	waitUntil(t, 5*time.Second, "the paused client to be dropped", func() bool {
		return f.Server.sessionCount() == 0 && f.Server.blockedClients.Load() == 0
	})
	// Its BLPOP is gone upstream: a push stays in the list.
	time.Sleep(100 * time.Millisecond)
	other := dialRaw(t, f.Addr)
	other.do("RPUSH", "paused:q", "x")
	time.Sleep(100 * time.Millisecond)
	if got := other.do("LLEN", "paused:q"); got != ":1\r\n" {
		t.Fatalf("LLEN after the departed BLPOP: %q", got)
	}
}

// TestWriteTimeoutClosesOnlyTheStalledClient: a client that stops reading
// while big replies are due is closed once its socket took nothing for
// the write timeout; another client is served throughout.
func TestWriteTimeoutClosesOnlyTheStalledClient(t *testing.T) {
	f := startFunnel(t, Options{ClientWriteTimeout: 300 * time.Millisecond}, pool.Options{})
	if got := dialRaw(t, f.Addr).do("SET", "big", strings.Repeat("x", 1<<20)); got != "+OK\r\n" {
		t.Fatal(got)
	}
	stalled := dialRaw(t, f.Addr)
	var b strings.Builder
	for range 32 {
		b.WriteString("*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
	}
	stalled.write([]byte(b.String())) // 32 MiB due; it never reads
	canary := dialRaw(t, f.Addr)
	closed := func() bool {
		return testutil.ToFloat64(f.Metrics.ClientsClosed.WithLabelValues("write_timeout")) == 1
	}
	start := time.Now()
	for !closed() {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the stalled client was never closed")
		}
		if got := canary.do("PING"); got != "+PONG\r\n" {
			t.Fatalf("canary: %q", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("closed after %v, before the write timeout", d)
	}
}

// TestChurnNeverCrossesReplies has clients come and go as fast as they
// can, many leaving mid-pipeline without reading, so socket descriptors
// are reused while replies for their old owners are still due: every
// client that reads gets exactly its own replies, in order.
func TestChurnNeverCrossesReplies(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	runRandomClients(t, f, 8, 2*time.Second, clientShape{maxValue: 16, maxCommands: 40, leaveOneIn: 2})
}

// TestLoopFailureClosesOnlyItsClients breaks one event loop (its epoll set
// is closed under it): its clients are closed with the event_loop reason,
// the other loops' clients are served on, new clients get a fresh loop,
// and shutdown still ends (the test's cleanup).
func TestLoopFailureClosesOnlyItsClients(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	conns := make([]*rawConn, 4) // spread over the loops, round robin
	for i := range conns {
		conns[i] = dialRaw(t, f.Addr)
		conns[i].do("PING")
	}
	f.Server.mu.Lock()
	broken := f.Server.loops[0]
	f.Server.mu.Unlock()
	onBroken := 0
	for _, s := range f.Server.sessionsSnapshot() {
		if s.sock.loop == broken {
			onBroken++
		}
	}
	broken.file.Close()
	waitUntil(t, 5*time.Second, "the broken loop's clients to be closed", func() bool {
		return testutil.ToFloat64(f.Metrics.ClientsClosed.WithLabelValues("event_loop")) == float64(onBroken) &&
			f.Server.sessionCount() == len(conns)-onBroken
	})
	served := 0
	for _, c := range conns {
		_, _ = c.conn.Write([]byte("*1\r\n$4\r\nPING\r\n"))
		if got, err := c.tryReply(5 * time.Second); err == nil && got == "+PONG\r\n" {
			served++
		}
	}
	if served != len(conns)-onBroken {
		t.Fatalf("%d clients served after a loop with %d of %d broke", served, onBroken, len(conns))
	}
	for range 4 {
		if got := dialRaw(t, f.Addr).do("PING"); got != "+PONG\r\n" {
			t.Fatalf("new client: %q", got)
		}
	}
}

// TestWatchChangesNeverUndoEachOther toggles what the loop watches a
// socket for from two goroutines at once, as the loop pausing a client and
// a completer finding its socket full do: the kernel's watch always ends
// as both asked (read back from /proc/self/fdinfo of the epoll set).
func TestWatchChangesNeverUndoEachOther(t *testing.T) {
	s, _ := outputPair(t, Options{})
	waitUntil(t, 5*time.Second, "the socket in the loop's set", func() bool { return epollWatch(t, s) >= 0 })
	for i := range 500 {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); s.sock.setReading(i%2 == 0) }()
		go func() { defer wg.Done(); s.sock.setWriting(i%3 == 0) }()
		wg.Wait()
		want := int64(unix.EPOLLRDHUP | unix.EPOLLET)
		if i%2 == 0 {
			want = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET
		}
		if i%3 == 0 {
			want |= unix.EPOLLOUT
		}
		if got := epollWatch(t, s); got != want {
			t.Fatalf("round %d: the kernel watches %#x, the socket asked for %#x", i, got, want)
		}
	}
}

// epollWatch returns the events the loop's epoll set watches s's socket
// for, without the error and hang-up bits the kernel always adds, or -1
// if the socket is not in the set.
func epollWatch(t *testing.T, s *session) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", s.sock.loop.epfd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == "tfd:" && f[1] == fmt.Sprint(s.sock.fd) && f[2] == "events:" {
			v, err := strconv.ParseInt(f[3], 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v &^ (unix.EPOLLERR | unix.EPOLLHUP)
		}
	}
	return -1
}

// pipeListener hands out in-memory pipes, which have no socket for a loop
// to watch, before the real connections of its Listener.
type pipeListener struct {
	net.Listener
	pipes   int
	clients chan net.Conn
}

func (l *pipeListener) Accept() (net.Conn, error) {
	if l.pipes > 0 {
		l.pipes--
		server, client := net.Pipe()
		l.clients <- client
		return server, nil
	}
	return l.Listener.Accept()
}

// TestUnwatchableConnectionsAreRefused serves a listener whose first
// connections have no socket a loop could watch: each is closed and
// counted (event_loop), accepting backs off instead of spinning, and the
// next real client is served.
func TestUnwatchableConnectionsAreRefused(t *testing.T) {
	rs := redistest.Start(t)
	up, err := pool.ParseURL("redis://"+rs.Addr, pool.TLSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry())
	p := pool.New(up, pool.Options{Metrics: m})
	srv := New(p, Options{Metrics: m})
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &pipeListener{Listener: tcp, pipes: 3, clients: make(chan net.Conn, 3)}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Shutdown(t.Context())
		p.Close(t.Context())
		<-served
	})
	for range 3 {
		c := <-ln.clients
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("an unwatchable connection was answered")
		}
	}
	if got := dialRaw(t, tcp.Addr().String()).do("PING"); got != "+PONG\r\n" {
		t.Fatalf("PING after the refused ones: %q", got)
	}
	if n := testutil.ToFloat64(m.ClientsClosed.WithLabelValues("event_loop")); n != 3 {
		t.Fatalf("%v refused connections counted, want 3", n)
	}
}

// TestRandomClientsKeepTheirReplies runs clients with random pipelines
// through a funnel with a tiny MaxPipeline (reading pauses and resumes all
// the time), some with big replies they read slowly in small pieces (their
// sockets fill and the loop watches them for room), some leaving mid-way:
// every client that reads gets exactly its own replies, in order.
func TestRandomClientsKeepTheirReplies(t *testing.T) {
	f := startFunnel(t, Options{MaxPipeline: 16}, pool.Options{})
	runRandomClients(t, f, 6, 2*time.Second, clientShape{maxValue: 64 << 10, maxCommands: 200, leaveOneIn: 4, slowOneIn: 3})
}

// clientShape bounds what randomClient does: its value's size, how many
// commands it pipelines, and one in how many clients leaves mid-way or
// reads slowly (0: none).
type clientShape struct {
	maxValue, maxCommands int
	leaveOneIn, slowOneIn int
}

// runRandomClients has workers run random clients one after another for d,
// then checks that every session ended.
func runRandomClients(t *testing.T, f *funnel, workers int, d time.Duration, shape clientShape) {
	t.Helper()
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; time.Now().Before(deadline); i++ {
				if err := randomClient(f.Addr, fmt.Sprintf("rnd:%d:%d", w, i), rng, shape); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "every session to end", func() bool { return f.Server.sessionCount() == 0 })
}

// randomClient sets its key to a value of random size, pipelines GETs and
// ECHOes at once, and then reads them all, all at once or slowly in small
// pieces, or leaves after some.
func randomClient(addr, name string, rng *rand.Rand, shape clientShape) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	value := strings.Repeat(name[len(name)-1:], 1+rng.IntN(shape.maxValue))
	n := 1 + rng.IntN(shape.maxCommands)
	var b strings.Builder
	fmt.Fprintf(&b, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(name), name, len(value), value)
	want := []string{"+OK\r\n"}
	for j := range n {
		if j%2 == 0 {
			fmt.Fprintf(&b, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(name), name)
			want = append(want, fmt.Sprintf("$%d\r\n%s\r\n", len(value), value))
		} else {
			echo := fmt.Sprint(name, "#", j)
			fmt.Fprintf(&b, "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", len(echo), echo)
			want = append(want, fmt.Sprintf("$%d\r\n%s\r\n", len(echo), echo))
		}
	}
	go func() { _, _ = c.Write([]byte(b.String())) }()
	leaveAfter := len(want)
	if shape.leaveOneIn > 0 && rng.IntN(shape.leaveOneIn) == 0 {
		leaveAfter = rng.IntN(len(want))
	}
	slow := shape.slowOneIn > 0 && rng.IntN(shape.slowOneIn) == 0
	rd := bufio.NewReaderSize(c, 512)
	for i, w := range want[:leaveAfter] {
		got := make([]byte, len(w))
		for off := 0; off < len(got); {
			end := len(got)
			if slow {
				end = min(off+1+rng.IntN(16<<10), len(got))
				time.Sleep(time.Duration(rng.IntN(100)) * time.Microsecond)
			}
			m, err := io.ReadFull(rd, got[off:end])
			if err != nil {
				return fmt.Errorf("%s: reply %d of %d: %v after %d bytes", name, i, len(want), err, off+m)
			}
			off += m
		}
		if string(got) != w {
			return fmt.Errorf("%s: reply %d is %q, want %q", name, i, short(string(got)), short(w))
		}
	}
	return nil
}

// TestEveryDepartureIsNoticed: clients send a random burst (a few
// commands, or more than one read buffer of them, some with a BLPOP that
// blocks) and leave at once, by close or by shutting their sending side,
// so the commands and the hang-up often come in one event. The loop's
// watches are edge-triggered, so a hang-up is said once: every client
// must still be dropped and every BLPOP end upstream, well before its own
// timeout.
func TestEveryDepartureIsNoticed(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	rng := newRand(fuzzSeed(t), 0)
	const clients = 60
	for i := range clients {
		c := dialRaw(t, f.Addr)
		var b strings.Builder
		n := 1 + rng.IntN(4)
		if rng.IntN(3) == 0 {
			n = 2000 + rng.IntN(2000) // more than a read buffer: the socket is read again
		}
		for j := range n {
			if j == n/2 && rng.IntN(2) == 0 {
				fmt.Fprintf(&b, "*3\r\n$5\r\nBLPOP\r\n$%d\r\ndepart:%d\r\n$2\r\n30\r\n", len(fmt.Sprintf("depart:%d", i)), i)
				continue
			}
			b.WriteString("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n")
		}
		c.write([]byte(b.String()))
		if rng.IntN(2) == 0 {
			c.conn.Close()
		} else {
			_ = c.conn.(*net.TCPConn).CloseWrite()
		}
	}
	waitUntil(t, 10*time.Second, "every client to be dropped and every BLPOP to end", func() bool {
		return f.Server.sessionCount() == 0 && f.Server.blockedClients.Load() == 0
	})
}

// TestPausedClientsHoldNoGoroutine: clients whose replies are held back
// (Redis paused) and that pipeline more than MaxPipeline commands are
// paused, each holding exactly MaxPipeline commands, and no goroutine
// waits for any of them; once Redis goes on, every reply comes, in order.
func TestPausedClientsHoldNoGoroutine(t *testing.T) {
	const maxPipeline, clients, perClient = 4, 40, 30
	f := startFunnel(t, Options{MaxPipeline: maxPipeline}, pool.Options{})
	conns := make([]*rawConn, clients)
	for i := range conns {
		conns[i] = dialRaw(t, f.Addr)
		// One reply in, so funnel knows the client's reply size and
		// admits several of its commands upstream at once.
		if got := conns[i].do("INCR", fmt.Sprintf("paused:%d", i)); got != ":1\r\n" {
			t.Fatal(got)
		}
	}
	time.Sleep(50 * time.Millisecond)
	before := runtime.NumGoroutine()
	if _, err := f.Redis.Do("CLIENT", "PAUSE", "1000"); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		var b strings.Builder
		key := fmt.Sprintf("paused:%d", i)
		for range perClient {
			fmt.Fprintf(&b, "*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n", len(key), key)
		}
		c.write([]byte(b.String()))
	}
	waitUntil(t, 5*time.Second, "every client to be paused", func() bool {
		for _, s := range f.Server.sessionsSnapshot() {
			if s.out.queued.Load() != maxPipeline {
				return false
			}
		}
		return true
	})
	if grown := runtime.NumGoroutine() - before; grown >= clients/2 {
		t.Fatalf("%d paused clients: %d more goroutines", clients, grown)
	}
	for i, c := range conns {
		for n := 2; n <= perClient+1; n++ {
			if got, want := c.reply(), fmt.Sprintf(":%d\r\n", n); got != want {
				t.Fatalf("client %d reply %d: %q, want %q", i, n, got, want)
			}
		}
	}
}

// TestStreamingClientsCannotStarveOthers: clients that pipeline PINGs
// without pause, from several writers each, and read their replies as
// fast, keep the loops busy for as long as they like; a client that sends
// one command at a time on the same loops is still answered, each time,
// while the streams go on. MaxPipeline is raised out of the way: its pause
// is one thing that makes the loop move on from a client, and this is
// about the other, that the loop reads a ready client once per pass (one
// buffer) and then serves the next.
//
// On this project's 2-core machine a streamer's socket still runs dry now
// and then, so a loop that read each socket until it was empty answered
// the light client too, only later: while a light PING waited, funnel
// answered a median of 60,000 of the streams' PINGs (27,000-198,000), and
// 16,000 (5,000-33,000) with the rule. The test checks the property that
// matters to the light client, an answer while the streams go on;
// TestOneReadPerPass checks the rule itself.
func TestStreamingClientsCannotStarveOthers(t *testing.T) {
	f := startFunnel(t, Options{MaxPipeline: 1 << 20}, pool.Options{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var streamers []net.Conn
	defer func() {
		close(stop)
		for _, c := range streamers {
			c.Close() // a writer may be blocked in Write
		}
		wg.Wait()
	}()
	var pongs atomic.Int64
	chunk := []byte(strings.Repeat("PING\r\n", 10_000))
	for range 4 { // the loops take clients in turn: every loop gets streamers
		c, err := net.Dial("tcp", f.Addr)
		if err != nil {
			t.Fatal(err)
		}
		streamers = append(streamers, c)
		// Several writers and a big socket buffer, so that the socket
		// always holds more than funnel reads at once.
		_ = c.(*net.TCPConn).SetWriteBuffer(8 << 20)
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !isClosed(stop) {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				pongs.Add(int64(n / len("+PONG\r\n")))
				if err != nil {
					return
				}
			}
		}()
	}
	waitUntil(t, 10*time.Second, "the streams to flow", func() bool { return pongs.Load() > 20_000 })
	for i := range runtime.GOMAXPROCS(0) + 1 { // clients go to the loops in turn: one shares each
		light := dialRaw(t, f.Addr)
		before, began := pongs.Load(), time.Now()
		for j := range 5 {
			light.send("PING")
			got, err := light.tryReply(10 * time.Second)
			if err != nil || got != "+PONG\r\n" {
				t.Fatalf("light client %d, PING %d, while the streams flow: %q %v", i, j, got, err)
			}
		}
		t.Logf("light client %d: 5 PINGs in %v", i, time.Since(began))
		// The streams went on meanwhile: the light client was not served
		// by the streamers being held back.
		waitUntil(t, 10*time.Second, "the streams to go on", func() bool { return pongs.Load() > before+10_000 })
	}
}
