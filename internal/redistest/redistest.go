// Package redistest starts real redis-server processes for tests, each on a
// free loopback port in a temporary directory, with no persistence.
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/resp"
)

// Server is a running redis-server owned by one test.
type Server struct {
	Addr string // host:port of the plain-text port
	Port int
	Dir  string

	t        testing.TB
	extra    []string
	password string // from --requirepass; Do and CommandStats log in with it
	cmd      *exec.Cmd
}

// Start runs redis-server with extra arguments (for example "--tls-port",
// "0") and stops it when the test ends. It fails the test if redis-server is
// missing or does not answer PING within 10 seconds.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: install Debian's redis-server package (make test does it as root)")
	}
	s := &Server{t: t, extra: extra, Dir: t.TempDir(), Port: FreePort(t)}
	for i, a := range extra {
		if a == "--requirepass" && i+1 < len(extra) {
			s.password = extra[i+1]
		}
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() {
	s.t.Helper()
	args := append([]string{
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1", "--dir", s.Dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
	}, s.extra...)
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if reply, err := s.Do("PING"); err == nil && reply == "+PONG\r\n" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	s.t.Fatalf("redis-server on %s did not answer PING", s.Addr)
}

// Stop kills the server; it is safe to call more than once.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart starts the server again on the same port after Stop.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Do sends one command on a fresh connection and returns the raw reply line
// (the first line only for aggregates and bulks; use DoRaw for all of it).
func (s *Server) Do(args ...string) (string, error) {
	var line string
	err := s.roundTrip(args, func(rd *bufio.Reader) (err error) {
		line, err = rd.ReadString('\n')
		return err
	})
	return line, err
}

// DoRaw is Do returning the whole reply.
func (s *Server) DoRaw(args ...string) (string, error) {
	var buf []byte
	err := s.roundTrip(args, func(rd *bufio.Reader) error {
		var scan resp.ReplyScanner
		for {
			if n, err := scan.Scan(buf); err != nil || n > 0 {
				buf = buf[:n]
				return err
			}
			b, err := rd.ReadByte()
			if err != nil {
				return err
			}
			buf = append(buf, b)
		}
	})
	return string(buf), err
}

// roundTrip sends one command on a fresh, logged-in connection and lets
// read take its reply.
func (s *Server) roundTrip(args []string, read func(*bufio.Reader) error) error {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	rd := bufio.NewReader(c)
	if err := s.login(c, rd); err != nil {
		return err
	}
	if _, err := c.Write(encode(args...)); err != nil {
		return err
	}
	return read(rd)
}

func encode(args ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return []byte(b.String())
}

// login sends AUTH when the server has a password.
func (s *Server) login(c net.Conn, rd *bufio.Reader) error {
	if s.password == "" {
		return nil
	}
	if _, err := c.Write(encode("AUTH", s.password)); err != nil {
		return err
	}
	line, err := rd.ReadString('\n')
	if err == nil && line != "+OK\r\n" {
		err = fmt.Errorf("AUTH: %q", line)
	}
	return err
}

// CommandStats returns the calls per command from INFO commandstats.
func (s *Server) CommandStats(t testing.TB) map[string]int {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	rd := bufio.NewReader(c)
	if err := s.login(c, rd); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(encode("INFO", "commandstats")); err != nil {
		t.Fatal(err)
	}
	head, err := rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		t.Fatalf("INFO commandstats: %q %v", head, err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(head[1:]))
	body := make([]byte, n+2)
	if _, err := io.ReadFull(rd, body); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(body), "\r\n") {
		name, rest, ok := strings.Cut(line, ":calls=")
		if !ok {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		out[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(calls)
	}
	return out
}
