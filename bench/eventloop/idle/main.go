// Command idle opens -n connections to a RESP server, sends one PING on
// each and reads the PONG, prints "ready N" and then holds the connections
// open, idle, until -hold passes, stdin closes or it is signalled. run.sh
// reads the proxy's RSS while they are held.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:6379", "server address")
	n := flag.Int("n", 10000, "connections")
	conc := flag.Int("conc", 64, "connections opened at once")
	hold := flag.Duration("hold", 60*time.Second, "how long to hold them at most")
	flag.Parse()
	conns := make([]net.Conn, *n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	next := make(chan int)
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := ping(*addr)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("connection %d: %w", i, err)
				}
				conns[i] = c
				mu.Unlock()
			}
		}()
	}
	for i := range conns {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		log.Fatal(firstErr)
	}
	fmt.Printf("ready %d\n", len(conns))
	done := make(chan struct{}, 3)
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); done <- struct{}{} }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-done:
	case <-sig:
	case <-time.After(*hold):
	}
	for _, c := range conns {
		_ = c.Close()
	}
}

// ping dials addr, sends PING and waits for +PONG.
func ping(addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	for try := 0; try < 5; try++ { // a full accept queue drops SYNs
		if c, err = net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(c, 16).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, err
	}
	if line != "+PONG\r\n" {
		c.Close()
		return nil, fmt.Errorf("reply %q", line)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}
