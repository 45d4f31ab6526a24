// Command soak measures a proxy's resident memory per client connection, for
// bench/soak.sh: it reads the RSS of the process -pid (VmRSS in
// /proc/<pid>/status) before, after opening -idle connections that each send
// one PING, read the PONG and then stay open, during and after -busy short
// connections (one SET or GET each, -conc at a time) while the idle ones are
// held, and 2 s after the idle ones are closed. It prints a table and exits 1
// if any connection failed.
//
//	go build -o /tmp/soak ./bench/soak
//	/tmp/soak -addr 127.0.0.1:6380 -pid $(pidof funnel) -idle 10000 -busy 10000
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	addr    = flag.String("addr", "127.0.0.1:6380", "proxy address")
	pid     = flag.Int("pid", 0, "proxy process id (for /proc/<pid>/status)")
	idleN   = flag.Int("idle", 10000, "idle connections to hold")
	busyN   = flag.Int("busy", 10000, "short connections, one command each")
	conc    = flag.Int("conc", 64, "connections dialled at once")
	timeout = flag.Duration("timeout", 20*time.Second, "per-connection deadline for dial, write and read")
	spread  = flag.Bool("spread", true, "dial from source addresses 127.0.1.1-127.0.1.250 so 20k connections and TIME_WAITs do not run out of ports")
)

var errs atomic.Int64

type status struct{ rssKiB, threads int }

func readStatus() status {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", *pid))
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	var s status
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			s.rssKiB, _ = strconv.Atoi(f[1])
		case "Threads:":
			s.threads, _ = strconv.Atoi(f[1])
		}
	}
	return s
}

func fail(format string, a ...any) {
	if errs.Add(1) <= 5 {
		fmt.Fprintf(os.Stderr, "soak: "+format+"\n", a...)
	}
}

func dial(i int) (net.Conn, error) {
	d := net.Dialer{Timeout: *timeout}
	if *spread {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%250))}
	}
	return d.Dial("tcp", *addr)
}

// roundTrip sends cmd and checks that the reply's first line starts with want.
func roundTrip(c net.Conn, r *bufio.Reader, cmd, want string) error {
	c.SetDeadline(time.Now().Add(*timeout))
	if _, err := c.Write([]byte(cmd)); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, want) {
		return fmt.Errorf("reply %q, want %q", strings.TrimSpace(line), want)
	}
	if line[0] == '$' && line != "$-1\r\n" { // a bulk string: read its body
		n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
		if err != nil {
			return err
		}
		if _, err := r.Discard(n + 2); err != nil {
			return err
		}
	}
	c.SetDeadline(time.Time{})
	return nil
}

// parallel runs f(0..n-1), conc at a time.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

func main() {
	flag.Parse()
	if *pid == 0 {
		fmt.Fprintln(os.Stderr, "soak: -pid is required")
		os.Exit(2)
	}
	type row struct {
		phase string
		open  int
		st    status
	}
	var rows []row
	before := readStatus()
	rows = append(rows, row{"before", 0, before})

	start := time.Now()
	idle := make([]net.Conn, *idleN)
	parallel(*idleN, func(i int) {
		c, err := dial(i)
		if err != nil {
			fail("idle %d: dial: %v", i, err)
			return
		}
		if err := roundTrip(c, bufio.NewReaderSize(c, 64), "PING\r\n", "+PONG"); err != nil {
			fail("idle %d: PING: %v", i, err)
			c.Close()
			return
		}
		idle[i] = c
	})
	open := 0
	for _, c := range idle {
		if c != nil {
			open++
		}
	}
	idleTook := time.Since(start)
	time.Sleep(time.Second)
	rows = append(rows, row{fmt.Sprintf("%d idle", *idleN), open, readStatus()})

	// Busy phase: sample RSS every 50 ms, keep the highest sample.
	var peak status
	var mu sync.Mutex
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			s := readStatus()
			mu.Lock()
			if s.rssKiB > peak.rssKiB {
				peak = s
			}
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	start = time.Now()
	parallel(*busyN, func(i int) {
		c, err := dial(*idleN + i)
		if err != nil {
			fail("busy %d: dial: %v", i, err)
			return
		}
		defer c.Close()
		r := bufio.NewReaderSize(c, 64)
		key := "soak:" + strconv.Itoa(i/2)
		cmd, want := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n", len(key), key), "+OK"
		if i%2 == 1 {
			cmd, want = fmt.Sprintf("*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(key), key), "$"
		}
		if err := roundTrip(c, r, cmd, want); err != nil {
			fail("busy %d: %v", i, err)
		}
	})
	busyTook := time.Since(start)
	close(stop)
	<-sampled
	mu.Lock()
	rows = append(rows, row{fmt.Sprintf("%d busy, peak during", *busyN), open + *conc, peak})
	mu.Unlock()
	time.Sleep(time.Second)
	rows = append(rows, row{"after busy (idle held)", open, readStatus()})

	for _, c := range idle {
		if c != nil {
			c.Close()
		}
	}
	time.Sleep(2 * time.Second)
	rows = append(rows, row{"idle closed + 2 s", 0, readStatus()})

	fmt.Printf("funnel RSS (VmRSS of pid %d); opened %d idle in %v, %d busy in %v (%d at a time)\n",
		*pid, open, idleTook.Round(time.Millisecond), *busyN, busyTook.Round(time.Millisecond), *conc)
	fmt.Printf("%-26s %6s %10s %8s %10s %12s %8s\n", "phase", "conns", "RSS KiB", "MiB", "+KiB", "B/conn", "threads")
	for _, r := range rows {
		over := r.st.rssKiB - before.rssKiB
		perConn := "-"
		if r.open > 0 && r.phase != "before" {
			perConn = strconv.Itoa(over * 1024 / r.open)
		}
		fmt.Printf("%-26s %6d %10d %8.1f %+10d %12s %8d\n", r.phase, r.open, r.st.rssKiB, float64(r.st.rssKiB)/1024, over, perConn, r.st.threads)
	}
	fmt.Println("+KiB and B/conn: over \"before\"; B/conn divides by the connections open in that phase.")
	if n := errs.Load(); n > 0 {
		fmt.Printf("FAILED: %d connection errors\n", n)
		os.Exit(1)
	}
	fmt.Println("errors: 0")
}
