package proxy

import (
	"fmt"
	"time"
)

// Preset is a set of rules for a kind of app, which one switch turns on
// (--preset). Rules the operator gives besides add to it; one for the same
// pattern replaces the preset's.
type Preset struct {
	Name         string
	CacheRules   []CacheRule
	AbsorbRules  []AbsorbRule
	ShareWaits   []string
	CacheScripts []string
}

// BullMQPreset is what funnel recommends for a BullMQ app:
//   - cache reads of bull:* keys for 2 s (job hashes, states), the bound on
//     how stale a job's status may be, since BullMQ's scripts change keys
//     they do not declare;
//   - absorb the meta hash's rewrite (every new Queue writes the same
//     values) for 60 s;
//   - share the workers' blocking waits for a job (BZPOPMIN of the queue's
//     marker) and the QueueEvents' XREAD of the events stream;
//   - and treat getStateV2 (job.getState()) as read-only even when funnel
//     only sees EVALSHA of it (scripts it saw with EVAL it judges itself).
var BullMQPreset = Preset{
	Name:        "bullmq",
	CacheRules:  []CacheRule{{Pattern: "bull:*", TTL: 2 * time.Second}},
	AbsorbRules: []AbsorbRule{{Pattern: "bull:*:meta", Window: 60 * time.Second}},
	ShareWaits:  []string{"bull:*"},
	// getStateV2 of bullmq 6.7.
	CacheScripts: []string{"5e107aa7dd123c4a80fc40151f8d25596c39353a"},
}

// Presets are the presets --preset knows, by name.
var Presets = map[string]Preset{"bullmq": BullMQPreset}

// Apply adds p's rules to opts, keeping any rule opts has for the same
// pattern.
func (p Preset) Apply(opts *Options) {
	have := map[string]bool{}
	for _, r := range opts.CacheRules {
		have[r.Pattern] = true
	}
	for _, r := range p.CacheRules {
		if !have[r.Pattern] {
			opts.CacheRules = append(opts.CacheRules, r)
		}
	}
	clear(have)
	for _, r := range opts.AbsorbRules {
		have[r.Pattern] = true
	}
	for _, r := range p.AbsorbRules {
		if !have[r.Pattern] {
			opts.AbsorbRules = append(opts.AbsorbRules, r)
		}
	}
	clear(have)
	for _, w := range opts.ShareWaits {
		have[w] = true
	}
	for _, w := range p.ShareWaits {
		if !have[w] {
			opts.ShareWaits = append(opts.ShareWaits, w)
		}
	}
	opts.CacheScripts = append(opts.CacheScripts, p.CacheScripts...)
}

// String describes the preset's rules, for --check and the log.
func (p Preset) String() string {
	return fmt.Sprintf("cache %v, absorb %v, share waits %v, read-only scripts %v", p.CacheRules, p.AbsorbRules, p.ShareWaits, p.CacheScripts)
}
