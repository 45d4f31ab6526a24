package proxy

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
)

// logBuffer is a log destination the test reads while funnel writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestOrdinaryClosesLogNoWarning: a client that leaves the ordinary ways
// (BullMQ's worker.close(), which sends QUIT while its BZPOPMIN blocks; a
// hang-up while blocked; a plain QUIT) is logged at debug level, never as a
// warning the operator would have to act on.
func TestOrdinaryClosesLogNoWarning(t *testing.T) {
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := startFunnel(t, Options{Logger: log}, pool.Options{})

	worker := dialRaw(t, f.Addr)
	worker.send("BZPOPMIN", "bull:q:marker", "5")
	waitUntil(t, 5*time.Second, "the worker to block", func() bool { return f.Server.blockedClients.Load() == 1 })
	worker.send("QUIT")
	time.Sleep(50 * time.Millisecond)
	worker.conn.Close()

	hangup := dialRaw(t, f.Addr)
	hangup.send("BLPOP", "q", "5")
	waitUntil(t, 5*time.Second, "the client to block", func() bool { return f.Server.blockedClients.Load() == 1 })
	hangup.conn.Close()

	quitter := dialRaw(t, f.Addr)
	if got := quitter.do("QUIT"); got != "+OK\r\n" {
		t.Fatalf("QUIT: %q", got)
	}
	waitUntil(t, 5*time.Second, "every client to be gone", func() bool { return f.Server.sessionCount() == 0 })
	out := logs.String()
	if n := strings.Count(out, `msg="client closed"`); n < 3 {
		t.Errorf("%d debug lines for 3 closed clients:\n%s", n, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Errorf("an ordinary close logged: %s", line)
		}
	}
}
