// Command rss drives one memory scenario against a running funnel, for
// bench/rss.sh, which measures funnel's resident memory around it:
//
//	slowreader  one client pipelines 1,024 GETs of a 2 MiB value in one
//	            write and never reads; a canary does PING and GET meanwhile
//	bigset      one SET of a 400 MB value, streamed
//	global      4 clients each pipeline 16 GETs of a 2 MiB value and read
//	            nothing for 3 s, then read everything (run funnel with a
//	            small --max-memory)
//
// It prints what it saw: replies, errors, the canary's latency.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:6380", "funnel's address")
	scenario := flag.String("scenario", "slowreader", "slowreader, bigset or global")
	flag.Parse()
	var err error
	switch *scenario {
	case "slowreader":
		err = slowReader(*addr)
	case "bigset":
		err = bigSet(*addr, 400_000_000)
	case "global":
		err = global(*addr)
	default:
		err = fmt.Errorf("unknown scenario %q", *scenario)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rss:", err)
		os.Exit(1)
	}
}

func command(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

// do sends one command on a fresh connection and returns the first line.
func do(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(command(args...)); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// canary runs PING and GET small in a loop until stop and reports latencies.
func canary(addr string, stop <-chan struct{}, out chan<- []time.Duration) {
	var lat []time.Duration
	defer func() { out <- lat }()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	for {
		select {
		case <-stop:
			return
		default:
		}
		for _, cmd := range [][]byte{command("PING"), command("GET", "small")} {
			start := time.Now()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(cmd); err != nil {
				return
			}
			if _, err := rd.ReadString('\n'); err != nil {
				return
			}
			if cmd[4] == '3' { // GET: its value line too
				if _, err := rd.ReadString('\n'); err != nil {
					return
				}
			}
			lat = append(lat, time.Since(start))
		}
		time.Sleep(time.Millisecond)
	}
}

func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[int(float64(len(lat)-1)*p)]
}

func setBig(addr string, size int) error {
	if got, err := do(addr, "SET", "big", strings.Repeat("x", size)); err != nil || got != "+OK\r\n" {
		return fmt.Errorf("SET big: %q %v", got, err)
	}
	if got, err := do(addr, "SET", "small", "s"); err != nil || got != "+OK\r\n" {
		return fmt.Errorf("SET small: %q %v", got, err)
	}
	return nil
}

func slowReader(addr string) error {
	if err := setBig(addr, 2<<20); err != nil {
		return err
	}
	stop := make(chan struct{})
	lat := make(chan []time.Duration, 1)
	go canary(addr, stop, lat)
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	var burst []byte
	for range 1024 {
		burst = append(burst, command("GET", "big")...)
	}
	start := time.Now()
	if _, err := c.Write(burst); err != nil {
		return err
	}
	// Never read; wait until funnel closes the connection (a read then
	// sees the bytes already sent and the end) or 15 s pass.
	closed := "no"
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	time.Sleep(2 * time.Second)
	n, err := io.Copy(io.Discard, c)
	if err == nil {
		closed = "yes"
	}
	close(stop)
	l := <-lat
	fmt.Printf("slowreader: closed by funnel: %s after %v; it had sent %d bytes of replies; canary: %d replies, p50 %v, p99 %v, max %v\n",
		closed, time.Since(start).Round(time.Millisecond), n, len(l), percentile(l, 0.5), percentile(l, 0.99), percentile(l, 1))
	return nil
}

func bigSet(addr string, size int) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(120 * time.Second))
	start := time.Now()
	w := bufio.NewWriterSize(c, 1<<20)
	fmt.Fprintf(w, "*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n$%d\r\n", size)
	chunk := bytes.Repeat([]byte("h"), 1<<20)
	for left := size; left > 0; {
		n := min(left, len(chunk))
		if _, err := w.Write(chunk[:n]); err != nil {
			return err
		}
		left -= n
	}
	w.WriteString("\r\n")
	if err := w.Flush(); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	fmt.Printf("bigset: SET of %d bytes answered %q in %v (err %v)\n", size, line, time.Since(start).Round(time.Millisecond), err)
	if line != "+OK\r\n" {
		return fmt.Errorf("SET huge: %q", line)
	}
	_, err = do(addr, "DEL", "huge")
	return err
}

func global(addr string) error {
	if err := setBig(addr, 2<<20); err != nil {
		return err
	}
	stop := make(chan struct{})
	lat := make(chan []time.Duration, 1)
	go canary(addr, stop, lat)
	var conns []net.Conn
	for range 4 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		var burst []byte
		for range 16 {
			burst = append(burst, command("GET", "big")...)
		}
		if _, err := c.Write(burst); err != nil {
			return err
		}
		conns = append(conns, c)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	l := <-lat
	var wg sync.WaitGroup
	got := make([]int, len(conns))
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rd := bufio.NewReaderSize(c, 4<<20)
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			for range 16 {
				if _, err := rd.ReadString('\n'); err != nil {
					return
				}
				if _, err := rd.Discard(2<<20 + 2); err != nil {
					return
				}
				got[i]++
			}
		}()
	}
	wg.Wait()
	fmt.Printf("global: replies read per client %v (want 16 each); canary while held: %d replies, p99 %v, max %v\n",
		got, len(l), percentile(l, 0.99), percentile(l, 1))
	return nil
}
