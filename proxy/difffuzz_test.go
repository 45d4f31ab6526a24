package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funnel-proxy/funnel/internal/redistest"
	"github.com/funnel-proxy/funnel/pool"
	"github.com/funnel-proxy/funnel/resp"
)

// TestDiffRequests is a differential fuzzer of request framing and parsing.
// It makes request streams from a small alphabet of commands whose replies do
// not depend on which server or connection answers them, encodes them as
// multibulk or inline, mutates the framing, and sends each stream on a fresh
// connection to funnel and to a separate redis-server used directly. The reply
// bytes and whether the server closed the connection must be the same.
//
// It runs the hand-written cases of diffSeeds, then random cases for 12 s
// (FUNNEL_FUZZ_TIME to change it, FUNNEL_FUZZ_SEED to repeat a run):
//
//	FUNNEL_FUZZ_TIME=10m go test -race -run 'TestDiffRequests$' -timeout 0 -v ./proxy/
func TestDiffRequests(t *testing.T) {
	budget := fuzzTime(t, 12*time.Second)
	seed := fuzzSeed(t)
	f := startFunnel(t, Options{}, pool.Options{})
	direct := redistest.Start(t)
	d := &differ{ref: direct.Addr, test: f.Addr, clean: []string{direct.Addr, f.Redis.Addr}}
	var found findings
	stats := d.fuzz(t, seed, budget, &found)
	t.Logf("tried %d cases (%d hand-written, %d random; %d bytes sent to each side; %d reruns to confirm timing-sensitive divergences)",
		stats.cases, len(diffSeeds), stats.cases-int64(len(diffSeeds)), stats.bytes, stats.reruns)
	stats.logTags(t)
	if n := found.report(t, "funnel vs redis-server"); n > 0 {
		t.Errorf("%d cases where funnel's replies or closing differ from Redis's", n)
	}
}

// TestDiffRequestsSelfCheck checks the differ itself. Redis compared with a
// second Redis must show no divergence at all (no false alarms from timing or
// from the case keys); and when one side receives the stream with one byte
// changed, the differ must notice.
func TestDiffRequestsSelfCheck(t *testing.T) {
	seed := fuzzSeed(t)
	a, b := redistest.Start(t), redistest.Start(t)
	d := &differ{ref: a.Addr, test: b.Addr, clean: []string{a.Addr, b.Addr}}
	var same findings
	stats := d.fuzz(t, seed, 2*time.Second, &same)
	t.Logf("redis vs redis: %d cases", stats.cases)
	if n := same.report(t, "redis vs redis"); n > 0 {
		t.Errorf("%d false divergences in %d cases of Redis against itself", n, stats.cases)
	}

	// One changed byte on the tested side. These cases must be flagged.
	for _, c := range []struct{ in, mutated string }{
		{"ECHO hello\r\n", "ECHO hellp\r\n"},                                             // reply bytes
		{"*1\r\n$4\r\nPING\r\n", "*1\r\n$4\r\nPINH\r\n"},                                 // an error instead
		{"PING\r\nPING\r\n", "PING\r\nQING\r\n"},                                         // second reply only
		{"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", "*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n"}, // error, closing
		{"QUIT\r\n", "QUIX\r\n"},                                                         // closing, and bytes
		{"ECHO a\r\n", "ECHO a\n\n"},                                                     // must be equal: not flagged
	} {
		ref, got, err := d.run([]byte(c.in), []byte(c.mutated), nil, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		flagged := !ref.equal(got)
		if want := c.in != "ECHO a\r\n"; flagged != want {
			t.Errorf("%q vs %q: flagged %v, want %v (redis %q/%v, other %q/%v)", c.in, c.mutated, flagged, want,
				ref.out, ref.closed, got.out, got.closed)
		}
	}
	if (sideReply{out: []byte("+OK\r\n"), closed: true}).equal(sideReply{out: []byte("+OK\r\n")}) {
		t.Error("a difference in closing alone is not flagged")
	}

	// Random cases with one random byte changed on one side: report how
	// many the differ notices (not all changes alter a reply: a byte of a
	// value that is never read back does not).
	var flagged, tried atomic.Int64
	var wg sync.WaitGroup
	for w := range diffWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 128; i += diffWorkers {
				r := newRand(seed, uint64(1e6+i))
				c := diffGenerate(r, 1e6+i)
				if len(c.in) == 0 {
					continue
				}
				m := bytes.Clone(c.in)
				m[r.IntN(len(m))] ^= byte(1 + r.IntN(255))
				ref, got, err := d.run(c.in, m, c.split, 200*time.Millisecond)
				if err != nil {
					t.Error(err)
					return
				}
				tried.Add(1)
				if !ref.equal(got) {
					flagged.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("one random byte changed: %d of %d cases flagged", flagged.Load(), tried.Load())
	if flagged.Load() == 0 {
		t.Error("no mutated case was flagged")
	}
}

// differ sends the same bytes to a reference server (Redis directly) and to
// the server under test, and reads what each answers.
type differ struct {
	ref, test string
	clean     []string // Redis servers whose case keys are deleted before a rerun
}

type diffStats struct {
	cases, bytes, reruns int64
	mu                   sync.Mutex
	byTag                map[string]*[2]int // tag -> cases with it, and how many diverged
}

// tally counts a case under each of its tags.
func (s *diffStats) tally(c diffCase, diverged bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byTag == nil {
		s.byTag = map[string]*[2]int{}
	}
	seen := map[string]bool{}
	for _, tag := range c.tags {
		if strings.HasPrefix(tag, "seed:") {
			tag = "seed"
		}
		if seen[tag] {
			continue
		}
		seen[tag] = true
		n := s.byTag[tag]
		if n == nil {
			n = new([2]int)
			s.byTag[tag] = n
		}
		n[0]++
		if diverged {
			n[1]++
		}
	}
}

// logTags logs, for each tag, how many cases had it and how many of those diverged.
func (s *diffStats) logTags(t *testing.T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var tags []string
	for tag := range s.byTag {
		tags = append(tags, tag)
	}
	sort.Strings(tags)
	var b strings.Builder
	for _, tag := range tags {
		fmt.Fprintf(&b, " %s %d/%d", tag, s.byTag[tag][1], s.byTag[tag][0])
	}
	t.Logf("diverged/tried by what a case contains:%s", b.String())
}

// sideReply is what one server sent back, and whether it closed.
type sideReply struct {
	out    []byte
	closed bool
}

func (a sideReply) equal(b sideReply) bool { return a.closed == b.closed && bytes.Equal(a.out, b.out) }

// behind reports whether got may still become want: a prefix of it so far,
// or all of it but without the close that want has.
func (got sideReply) behind(want sideReply) bool {
	return bytes.HasPrefix(want.out, got.out) && (len(got.out) < len(want.out) || want.closed && !got.closed)
}

const (
	diffWorkers  = 32
	diffMaxReply = 4 << 20
)

// fuzz runs the seeds and then random cases until budget has passed.
func (d *differ) fuzz(t *testing.T, seed uint64, budget time.Duration, found *findings) *diffStats {
	stats := &diffStats{}
	var next atomic.Int64
	stop := time.Now().Add(budget)
	var wg sync.WaitGroup
	var fatal atomic.Value
	for range diffWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id := int(next.Add(1) - 1)
				if id >= len(diffSeeds) && time.Now().After(stop) {
					return
				}
				c := diffCaseFor(seed, id)
				if err := d.check(c, found, stats); err != nil {
					fatal.Store(err)
					return
				}
				atomic.AddInt64(&stats.cases, 1)
				atomic.AddInt64(&stats.bytes, int64(len(c.in)))
			}
		}()
	}
	wg.Wait()
	if err, _ := fatal.Load().(error); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return stats
}

// check runs one case and records a divergence. A divergence that timing
// could explain (one side only behind the other) is run again, with longer
// waits, before it counts.
func (d *differ) check(c diffCase, found *findings, stats *diffStats) error {
	ref, got, err := d.run(c.in, c.in, c.split, 150*time.Millisecond)
	if err != nil {
		return err
	}
	if ref.equal(got) {
		stats.tally(c, false)
		return nil
	}
	collateral := bytes.Contains(got.out, []byte("funnel: upstream")) && !bytes.Contains(ref.out, []byte("funnel:"))
	if got.behind(ref) || ref.behind(got) || collateral {
		atomic.AddInt64(&stats.reruns, 1)
		if err := d.cleanKeys(c.id); err != nil {
			return err
		}
		ref2, got2, err := d.run(c.in, c.in, c.split, time.Second)
		if err != nil {
			return err
		}
		if ref2.equal(got2) {
			stats.tally(c, collateral)
			if collateral {
				// This case is fine on its own: another case's bad input
				// broke the shared upstream connection under it.
				found.add("collateral: the case got a funnel upstream error caused by another client's request",
					c.describe(ref, got), "")
			}
			return nil
		}
		ref, got = ref2, got2
	}
	stats.tally(c, true)
	found.add(diffSignature(ref, got), c.describe(ref, got), diffAllowed(c, ref, got))
	return nil
}

// diffAllowlist lists the divergences that are expected, each with its
// reason. With this alphabet no reply may differ but in the one way below,
// which timing decides on both sides.
var diffAllowlist = []struct {
	reason string
	match  func(c diffCase, ref, got sideReply) bool
}{
	{
		reason: "an inline line between 64 KiB and 400 KiB: whether Redis takes it depends on how its reads (16 KiB, then growing) split the input, and Redis disagrees with itself there (see the self-check); funnel refuses every line over 64 KiB, however it arrives",
		match: func(c diffCase, ref, got sideReply) bool {
			return hasLineBetween(c.in, 64<<10, 400<<10) &&
				(bytes.Contains(ref.out, []byte("too big inline request")) || bytes.Contains(got.out, []byte("too big inline request")))
		},
	},
	{
		reason: "a multibulk or bulk count line over 64 KiB: Redis answers \"too big ... count string\" when its buffer holds 64 KiB of the line before its end, else it parses the line and answers \"invalid ... length\"; how its reads (growing with its buffer, and slower on a loaded machine) split the input decides; funnel answers the first, however the line arrives",
		match: func(c diffCase, ref, got sideReply) bool {
			tooBig := func(b []byte) bool { return bytes.Contains(b, []byte("count string\r\n")) }
			invalid := func(b []byte) bool {
				return bytes.Contains(b, []byte("invalid multibulk length")) || bytes.Contains(b, []byte("invalid bulk length"))
			}
			return hasLineBetween(c.in, 64<<10, 1<<30) && ref.closed && got.closed &&
				(tooBig(ref.out) && invalid(got.out) || invalid(ref.out) && tooBig(got.out))
		},
	},
	{
		reason: "HELLO's reply names the connection's id, which is each server's own",
		match: func(c diffCase, ref, got sideReply) bool {
			return ref.closed == got.closed && bytes.Equal(maskIDs(ref.out), maskIDs(got.out)) && bytes.Contains(ref.out, []byte("$2\r\nid\r\n:"))
		},
	},
	{
		reason: "a POST or Host: line closes the client and nothing after it runs; Redis drops the replies of the commands read together with it (it writes after each read, and which commands come in the same read depends on timing), funnel writes them before it closes",
		match: func(c diffCase, ref, got sideReply) bool {
			return hasCrossProtocolLine(c.in) && ref.closed && got.closed &&
				(bytes.HasPrefix(ref.out, got.out) || bytes.HasPrefix(got.out, ref.out))
		},
	},
}

// helloID is the id field of HELLO's reply, in RESP2 or RESP3.
var helloID = regexp.MustCompile(`\$2\r\nid\r\n:[0-9]+\r\n`)

// maskIDs replaces the connection ids in HELLO replies.
func maskIDs(b []byte) []byte { return helloID.ReplaceAll(b, []byte("$2\r\nid\r\n:N\r\n")) }

// hasLineBetween reports whether in has a line (up to a newline or the
// end) longer than lo bytes and shorter than hi.
func hasLineBetween(in []byte, lo, hi int) bool {
	for _, line := range bytes.Split(in, []byte("\n")) {
		if len(line) > lo && len(line) < hi {
			return true
		}
	}
	return false
}

// hasCrossProtocolLine reports whether in has a POST or Host: command.
func hasCrossProtocolLine(in []byte) bool {
	lower := bytes.ToLower(in)
	return bytes.Contains(lower, []byte("post")) || bytes.Contains(lower, []byte("host:"))
}

// diffAllowed returns the reason a divergence is expected, or "".
func diffAllowed(c diffCase, ref, got sideReply) string {
	for _, a := range diffAllowlist {
		if a.match(c, ref, got) {
			return a.reason
		}
	}
	return ""
}

// cleanKeys deletes case id's keys on both Redis servers.
func (d *differ) cleanKeys(id int) error {
	args := []string{"DEL"}
	for k := range diffKeys {
		args = append(args, diffKey(id, k))
	}
	for _, addr := range d.clean {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		var bargs [][]byte
		for _, a := range args {
			bargs = append(bargs, []byte(a))
		}
		_, err = c.Write(resp.AppendCommand(nil, bargs...))
		if err == nil {
			_, err = c.Read(make([]byte, 64))
		}
		c.Close()
		if err != nil {
			return fmt.Errorf("clean keys on %s: %w", addr, err)
		}
	}
	return nil
}

// run sends refIn to the reference and testIn to the tested server (the same
// bytes except in the self-check), in pieces cut at split, each on a fresh
// connection. It then reads the reference until it closes or is quiet for
// quiet, and the tested server until it matches, closes, diverges, or a few
// seconds pass.
func (d *differ) run(refIn, testIn []byte, split []int, quiet time.Duration) (ref, got sideReply, err error) {
	conns := make([]net.Conn, 2)
	for i, addr := range []string{d.ref, d.test} {
		conns[i], err = net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return ref, got, fmt.Errorf("dial %s: %w", addr, err)
		}
		defer conns[i].Close()
	}
	var wg sync.WaitGroup
	for i, in := range [][]byte{refIn, testIn} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writePieces(conns[i], in, split)
		}()
	}
	wg.Wait()
	ref = readReply(conns[0], quiet, 5*time.Second, nil)
	got = readReply(conns[1], quiet, 5*time.Second, &ref)
	return ref, got, nil
}

// writePieces writes in, cut at the offsets in split with a short pause
// between pieces so that the server reads them separately. Write errors are
// ignored: a server that closes early is what the reads then show.
func writePieces(c net.Conn, in []byte, split []int) {
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	prev := 0
	for _, at := range append(split[:len(split):len(split)], len(in)) {
		if at < prev || at > len(in) {
			continue
		}
		if _, err := c.Write(in[prev:at]); err != nil {
			return
		}
		prev = at
		if at < len(in) {
			time.Sleep(3 * time.Millisecond)
		}
	}
}

// readReply reads until the peer closes, or nothing arrives for quiet. With
// want set, it keeps waiting while what it has is still on the way to want:
// up to 3 s for missing bytes, 2 s for a missing close. hard bounds it all.
func readReply(c net.Conn, quiet, hard time.Duration, want *sideReply) sideReply {
	var r sideReply
	buf := make([]byte, 32<<10)
	start := time.Now()
	for len(r.out) < diffMaxReply {
		end := start.Add(hard)
		if want != nil {
			if !r.behind(*want) {
				end = time.Now().Add(quiet) // diverged or matched: look for more only briefly
			} else if len(r.out) < len(want.out) {
				end = start.Add(3 * time.Second)
			} else {
				end = start.Add(2 * time.Second)
			}
		}
		dl := time.Now().Add(quiet)
		if dl.After(end) {
			dl = end
		}
		_ = c.SetReadDeadline(dl)
		n, err := c.Read(buf)
		r.out = append(r.out, buf[:n]...)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if n == 0 && !time.Now().Before(end) {
				return r
			}
			if n == 0 && want == nil {
				return r
			}
			continue
		}
		r.closed = true // EOF, or reset by the peer
		return r
	}
	return r
}

var (
	diffQuotedRE = regexp.MustCompile(`'[^']*'`)
	diffDigitRE  = regexp.MustCompile(`\d+`)
)

// diffSignature names a divergence by where the two sides part: the reply
// line of each there, with quoted arguments and numbers folded so that cases
// with one cause group together, and how each ended.
func diffSignature(ref, got sideReply) string {
	p := 0
	for p < len(ref.out) && p < len(got.out) && ref.out[p] == got.out[p] {
		p++
	}
	// Back up to the start of the reply line where they part.
	for p > 0 && ref.out[p-1] != '\n' {
		p--
	}
	show := func(r sideReply) string {
		s := r.out[p:]
		if i := bytes.Index(s, []byte("\r\n")); i >= 0 {
			s = s[:i] // the first reply line where the two part
		}
		if len(s) > 60 {
			s = s[:60]
		}
		q := diffQuotedRE.ReplaceAllString(fmt.Sprintf("%q", s), "'…'")
		q = diffDigitRE.ReplaceAllString(q, "N")
		state := "open"
		if r.closed {
			state = "closed"
		}
		return q + " " + state
	}
	return "redis " + show(ref) + " | funnel " + show(got)
}
