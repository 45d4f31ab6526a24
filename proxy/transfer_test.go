package proxy

import (
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// TestNewcomerNotQueuedBehindTransfer: a client pipelines 400 reads of
// about 110 KiB each, 44 MiB in all, which keep the connection it is on
// busy for hundreds of milliseconds while replies flow without a pause, so
// the stall rule does not steer anyone away. A client that starts then
// must not be sent to the same connection to queue behind the transfer: it
// is answered before the first client has half of its replies. Pick
// weighs the requests on a connection by their bytes, and their replies'
// at their client's average size, as well as by their count; a count of
// 400 alone is under what makes a connection too busy to join.
func TestNewcomerNotQueuedBehindTransfer(t *testing.T) {
	f := startFunnel(t, Options{}, pool.Options{})
	const elements, reads = 8000, 400
	push := []string{"RPUSH", "big"}
	for i := range elements {
		push = append(push, "element"+strconv.Itoa(i%10)) // 15 bytes each in a reply
	}
	if _, err := f.Redis.Do(push...); err != nil {
		t.Fatal(err)
	}
	heavy := dialRaw(t, f.Addr)
	if got := heavy.do("LRANGE", "big", "0", "-1"); !strings.HasPrefix(got, "*"+strconv.Itoa(elements)+"\r\n") {
		t.Fatalf("LRANGE: %q", short(got))
	}
	// Distinct ranges, so that no read joins another's.
	var flood []byte
	for i := range reads {
		flood = resp.AppendCommand(flood, []byte("LRANGE"), []byte("big"), []byte(strconv.Itoa(i)), []byte("-1"))
	}
	heavy.write(flood)
	var got atomic.Int32
	failed := make(chan error, 1)
	go func() {
		for range reads {
			if _, err := heavy.tryReply(30 * time.Second); err != nil {
				failed <- err
				return
			}
			got.Add(1)
		}
		close(failed)
	}()
	waitUntil(t, 30*time.Second, "the first reply of the transfer", func() bool { return got.Load() > 0 })

	light := dialRaw(t, f.Addr)
	if reply := light.do("GET", "small"); reply != "$-1\r\n" {
		t.Fatalf("GET small: %q", reply)
	}
	if n := got.Load(); n >= reads/2 {
		t.Fatalf("a new client's GET was answered only after %d of the other client's %d reads: it queued behind them", n, reads)
	}
	if err := <-failed; err != nil {
		t.Fatalf("the transfer: %v", err)
	}
}
