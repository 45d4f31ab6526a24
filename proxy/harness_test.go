package proxy

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Support shared by the isolation harnesses (difffuzz_test.go,
// cmdfuzz_test.go, canary_test.go, ryw_test.go): their time budget, seed and
// skip list from the environment, and a record of the divergences found.
//
// Environment:
//
//	FUNNEL_FUZZ_TIME  how long each time-bounded harness runs (a Go duration,
//	                  e.g. 10m); unset: the harness's short default for make test
//	FUNNEL_FUZZ_SEED  the random seed (an integer); unset: the clock. Every
//	                  harness logs the seed it used, so a run can be repeated.
//	FUNNEL_FUZZ_SKIP  comma-separated names of things to leave out. Today one:
//	                  "crashers", the inputs known to crash funnel (BLMPOP,
//	                  BZMPOP and WAIT with too few arguments, issue 8 defect 1),
//	                  to step past the crash and see what else a harness finds.
//	                  Unset: nothing is skipped, and those inputs crash the test
//	                  binary until the defect is fixed.
//
// ryw_test.go has its own budget: FUNNEL_RYW_OPS or FUNNEL_RYW_TIME per
// configuration. Long runs exceed go test's default 10-minute timeout: add
// -timeout 0.

// fuzzTime returns the harness's time budget: FUNNEL_FUZZ_TIME, or def.
func fuzzTime(t testing.TB, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv("FUNNEL_FUZZ_TIME")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("FUNNEL_FUZZ_TIME=%q: want a positive Go duration such as 10m", v)
	}
	return d
}

// fuzzSeed returns FUNNEL_FUZZ_SEED, or a seed from the clock, and logs it.
func fuzzSeed(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FUNNEL_FUZZ_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FUNNEL_FUZZ_SEED=%q: want an unsigned integer", v)
		}
		seed = n
	}
	t.Logf("seed %d (repeat with FUNNEL_FUZZ_SEED=%d)", seed, seed)
	return seed
}

// newRand returns a generator for stream i of seed, so that concurrent
// workers each have their own and a case can be made again from its number.
func newRand(seed, i uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, i)) }

// fuzzSkipped reports whether FUNNEL_FUZZ_SKIP names name.
func fuzzSkipped(name string) bool {
	for _, s := range strings.Split(os.Getenv("FUNNEL_FUZZ_SKIP"), ",") {
		if strings.EqualFold(strings.TrimSpace(s), name) {
			return true
		}
	}
	return false
}

// findings groups divergences by signature: a count and the first example of
// each. Safe for concurrent use.
type findings struct {
	mu     sync.Mutex
	groups map[string]*finding
}

type finding struct {
	sig     string
	example string
	count   int
	allowed string // the allowlist's reason; empty: a failure
}

// add records one divergence. allowed is the allowlist entry's reason when
// the divergence is expected, or empty.
func (f *findings) add(sig, example, allowed string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.groups == nil {
		f.groups = map[string]*finding{}
	}
	g := f.groups[sig]
	if g == nil {
		g = &finding{sig: sig, example: example, allowed: allowed}
		f.groups[sig] = g
	}
	g.count++
}

// report logs every group, most frequent first, and returns the number of
// divergences that are not allowlisted.
func (f *findings) report(t testing.TB, what string) (failures int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var gs []*finding
	allowed := 0
	for _, g := range f.groups {
		gs = append(gs, g)
		if g.allowed == "" {
			failures += g.count
		} else {
			allowed += g.count
		}
	}
	sort.Slice(gs, func(i, j int) bool {
		if gs[i].count != gs[j].count {
			return gs[i].count > gs[j].count
		}
		return gs[i].sig < gs[j].sig
	})
	t.Logf("%s: %d divergences in %d groups (%d allowlisted)", what, failures+allowed, len(gs), allowed)
	for _, g := range gs {
		status := "FAIL"
		if g.allowed != "" {
			status = "allowed (" + g.allowed + ")"
		}
		t.Logf("  %dx %s: %s\n      e.g. %s", g.count, status, g.sig, g.example)
	}
	return failures
}

// quoteBytes shows b as a Go string literal, cut to max bytes.
func quoteBytes(b []byte, max int) string {
	if len(b) > max {
		return fmt.Sprintf("%q...(%d bytes)", b[:max], len(b))
	}
	return fmt.Sprintf("%q", b)
}
