// Package command is funnel's table of Redis commands: arity, flags and where
// each command's keys are. It is generated from a real redis-server (see gen)
// and is the one source the router, the transaction check and the cache use.
package command

//go:generate go run ./gen -addr 127.0.0.1:6379 -out table_gen.go

import (
	"bytes"
	"sort"
	"strconv"
	"strings"
)

// Flag is a property of a command, as COMMAND INFO reports it.
type Flag uint32

// Command flags. The names follow COMMAND INFO; Nondeterministic comes from
// the "nondeterministic_output" tip.
const (
	Write Flag = 1 << iota
	ReadOnly
	DenyOOM
	Admin
	PubSub
	NoScript
	Blocking
	Loading
	Stale
	SkipMonitor
	SkipSlowlog
	Fast
	NoAuth
	MayReplicate
	NoMulti
	MovableKeys
	AllowBusy
	NoMandatoryKeys
	NoAsyncLoading
	Nondeterministic
)

// KeySpec says where a command keeps a group of its keys, in the form of
// Redis 7 key specifications: a begin search (an index, or a keyword) and a
// find-keys rule (a range, or a count argument).
type KeySpec struct {
	Write      bool // the command may change these keys
	Incomplete bool // the spec may miss some keys
	Unknown    bool // the keys cannot be found from the arguments

	BeginIndex  int    // first key at this index, when Keyword is empty
	Keyword     string // or: first key follows this keyword
	KeywordFrom int    // where the keyword search starts; negative counts from the end

	KeyNum    bool // the key count is an argument (EVAL's numkeys)
	KeyNumIdx int  // with KeyNum: the count's offset from the begin index
	FirstKey  int  // with KeyNum: the first key's offset from the begin index
	LastKey   int  // with a range: last key's offset, or negative from the end
	KeyStep   int
	Limit     int // with LastKey -1: only 1/Limit of the remaining arguments are keys
}

// Info describes one command or subcommand.
type Info struct {
	Name        string // lower case; subcommands as "client|list"
	Arity       int    // argument count, command included; negative means "at least"
	Flags       Flag
	Keys        []KeySpec
	Subcommands map[string]*Info
	// ID numbers the command densely, from 0 to Count()-1 in name order,
	// so that callers can keep what they know of each command in a slice
	// instead of a map keyed by name.
	ID int
}

// Has reports whether the command has every flag in f.
func (i *Info) Has(f Flag) bool { return i.Flags&f == f }

// Lookup finds the command named by args[0], and for container commands
// (CLIENT, CONFIG, XINFO ...) the subcommand in args[1]. It returns nil for
// an unknown command; a container with an unknown subcommand returns the
// container itself.
func Lookup(args [][]byte) *Info {
	if len(args) == 0 {
		return nil
	}
	info := find(table, args[0])
	if info == nil || info.Subcommands == nil || len(args) < 2 {
		return info
	}
	if sub := find(info.Subcommands, args[1]); sub != nil {
		return sub
	}
	return info
}

// Resolve finds the command args name as Redis's lookupCommand does: the
// command itself when it has no subcommands or args names none, else the
// subcommand. For a container command (CLIENT, CONFIG ...) with an unknown
// subcommand it returns nil and the container, so the caller can answer as
// Redis does ("unknown subcommand ... Try CLIENT HELP."); for an unknown
// command, nil and nil.
func Resolve(args [][]byte) (info, container *Info) {
	if len(args) == 0 {
		return nil, nil
	}
	info = find(table, args[0])
	if info == nil || info.Subcommands == nil || len(args) < 2 {
		return info, nil
	}
	if sub := find(info.Subcommands, args[1]); sub != nil {
		return sub, nil
	}
	return nil, info
}

// Known reports whether name, in lower case, is in the table: a command, or
// a subcommand written "container|sub".
func Known(name string) bool {
	base, sub, isSub := strings.Cut(name, "|")
	info := table[base]
	if info == nil || !isSub {
		return info != nil
	}
	return info.Subcommands[sub] != nil
}

// All returns every command and every subcommand of the table, sorted by
// name ("client" comes before "client|id"). Containers are included as
// well as their subcommands. The Infos are the table's own: callers must not
// change them.
func All() []*Info {
	var all []*Info
	for _, info := range table {
		all = append(all, info)
		for _, sub := range info.Subcommands {
			all = append(all, sub)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return all
}

// CheckArity reports whether args satisfy the command's arity.
func (i *Info) CheckArity(args [][]byte) bool {
	if i.Arity >= 0 {
		return len(args) == i.Arity
	}
	return len(args) >= -i.Arity
}

// find looks name up in m, ignoring ASCII case, without allocating: names
// are lowered into a stack buffer, and Go does not copy for m[string(b)].
func find(m map[string]*Info, name []byte) *Info {
	var buf [32]byte
	if len(name) > len(buf) {
		return nil // longer than any command name
	}
	for i, c := range name {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return m[string(buf[:len(name)])]
}

// Name returns the canonical name of the command in args, given its Lookup
// result: the table's name when known, otherwise the first argument in
// lower case.
func Name(info *Info, args [][]byte) string {
	if info != nil {
		return info.Name
	}
	if len(args) == 0 {
		return ""
	}
	return string(bytes.ToLower(args[0]))
}

// KeyPositions appends to dst the argument indexes of the keys args name,
// following the key specs as Redis's getKeysUsingKeySpecs does. complete is
// false when a spec could not account for every key (SORT ... STORE,
// MIGRATE's KEYS form): callers that must not miss a key then treat the
// command as touching unknown keys.
func (i *Info) KeyPositions(dst []int, args [][]byte) (_ []int, complete bool) {
	complete = true
	argc := len(args)
	for _, spec := range i.Keys {
		if spec.Unknown || spec.Incomplete {
			complete = false
		}
		if spec.Unknown {
			continue
		}
		first := 0
		if spec.Keyword == "" {
			first = spec.BeginIndex
		} else {
			first = findKeyword(args, spec.Keyword, spec.KeywordFrom)
			if first == 0 {
				continue
			}
		}
		var last, step int
		if spec.KeyNum {
			idx := first + spec.KeyNumIdx
			if idx >= argc {
				complete = false
				continue
			}
			n, err := strconv.Atoi(string(args[idx][:min(len(args[idx]), 20)]))
			if err != nil || n < 0 || len(args[idx]) > 20 {
				complete = false
				continue
			}
			first += spec.FirstKey
			last = first + n - 1
			step = spec.KeyStep
		} else {
			switch {
			case spec.LastKey >= 0:
				last = first + spec.LastKey
			case spec.Limit == 0:
				last = argc + spec.LastKey
			default:
				last = first + (argc-first)/spec.Limit + spec.LastKey
			}
			step = spec.KeyStep
		}
		if step <= 0 {
			step = 1
		}
		for k := first; k <= last; k += step {
			if k >= argc || k < 1 {
				break // too few arguments: Redis answers with an arity or syntax error
			}
			dst = append(dst, k)
		}
	}
	return dst, complete
}

// findKeyword returns the index after keyword in args, searching forward from
// `from` when positive or backward from argc+from when negative; 0 if absent.
func findKeyword(args [][]byte, keyword string, from int) int {
	argc := len(args)
	start, end := from, argc-1
	if from <= 0 {
		start, end = argc+from, 0
	}
	for k := start; k != end; {
		if k >= argc || k < 1 {
			break
		}
		if bytes.EqualFold(args[k], []byte(keyword)) {
			return k + 1
		}
		if start <= end {
			k++
		} else {
			k--
		}
	}
	return 0
}

// count is the number of commands and subcommands in the table.
var count int

// number gives every Info its ID, once the table is complete.
func number() {
	all := All()
	for i, info := range all {
		info.ID = i
	}
	count = len(all)
}

// Count returns how many commands and subcommands the table has: every
// Info's ID is below it.
func Count() int { return count }

// ByID returns what f says of every command and subcommand, indexed by ID:
// a table a caller reads without hashing a name.
func ByID[T any](f func(*Info) T) []T {
	out := make([]T, count)
	for _, info := range All() {
		out[info.ID] = f(info)
	}
	return out
}
