// Package script tells whether a Lua script only reads, from its text, so
// that funnel may cache EVAL and EVALSHA of it like any read.
//
// A script only reads if every Redis command it can run is named, as a
// string literal, at a call of redis.call or redis.pcall (or of a local
// alias of one, as BullMQ's scripts write "local rcall = redis.call"), and
// every such command only reads. Anything else that reaches those
// functions (a command name in a variable, redis.call passed around or
// stored in a table, redis["call"]) makes the script count as one that may
// write: funnel cannot tell what it runs.
package script

// ReadOnly reports whether body only reads, as the package comment says;
// readOnly says whether a command, named in lower case, only reads.
func ReadOnly(body []byte, readOnly func(name string) bool) bool {
	toks, ok := tokenize(body)
	if !ok {
		return false
	}
	aliases := map[string]bool{}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.kind != identTok {
			continue
		}
		switch {
		case t.text == "redis" && next(toks, i+1, ".") && (nextIdent(toks, i+2, "call") || nextIdent(toks, i+2, "pcall")):
			// "local NAME = redis.call" makes NAME an alias, if nothing else
			// follows on that statement.
			if i >= 3 && toks[i-1].text == "=" && toks[i-2].kind == identTok && toks[i-3].text == "local" && !next(toks, i+3, "(") {
				aliases[toks[i-2].text] = true
				i += 2
				continue
			}
			if !literalCommand(toks, i+3, readOnly) {
				return false
			}
			i += 2
		case t.text == "redis" && next(toks, i+1, "["):
			return false // redis["call"]: not a form funnel follows
		case aliases[t.text]:
			if i > 0 && toks[i-1].text == "." {
				continue // a field that happens to share the name
			}
			if !literalCommand(toks, i+1, readOnly) {
				return false
			}
		}
	}
	return true
}

// literalCommand reports whether toks[i:] is "(" then a string literal
// naming a read-only command, then "," or ")".
func literalCommand(toks []token, i int, readOnly func(string) bool) bool {
	if !next(toks, i, "(") || i+2 >= len(toks) || toks[i+1].kind != stringTok {
		return false
	}
	if end := toks[i+2].text; end != "," && end != ")" {
		return false // "GE" .. "T": built at run time
	}
	return readOnly(lower(toks[i+1].text))
}

func next(toks []token, i int, text string) bool {
	return i < len(toks) && toks[i].kind == punctTok && toks[i].text == text
}

func nextIdent(toks []token, i int, text string) bool {
	return i < len(toks) && toks[i].kind == identTok && toks[i].text == text
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

type tokenKind uint8

const (
	identTok  tokenKind = iota // a name or keyword
	stringTok                  // a string literal; text is its value
	punctTok                   // one punctuation character
	numberTok
)

type token struct {
	kind tokenKind
	text string
}

// tokenize splits Lua source into names, string literals (their values,
// escapes resolved only as far as needed: a command name has none),
// numbers and punctuation, skipping white space and comments. It reports
// false for text it cannot follow (an unterminated string or comment).
func tokenize(src []byte) ([]token, bool) {
	var toks []token
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(src) && src[i+1] == '-':
			i += 2
			if level, ok := longBracket(src, i); ok {
				end, ok := longEnd(src, i+level+2, level)
				if !ok {
					return nil, false
				}
				i = end
				continue
			}
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'':
			var b []byte
			j := i + 1
			for ; j < len(src) && src[j] != c; j++ {
				if src[j] == '\\' && j+1 < len(src) {
					j++ // an escape: the value no longer names a command as is
					b = append(b, '\\')
				}
				if src[j] == '\n' {
					return nil, false
				}
				b = append(b, src[j])
			}
			if j >= len(src) {
				return nil, false
			}
			toks = append(toks, token{stringTok, string(b)})
			i = j + 1
		case c == '[':
			if level, ok := longBracket(src, i); ok {
				end, ok := longEnd(src, i+level+2, level)
				if !ok {
					return nil, false
				}
				toks = append(toks, token{stringTok, string(src[i+level+2 : end-level-2])})
				i = end
				continue
			}
			toks = append(toks, token{punctTok, "["})
			i++
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			j := i
			for j < len(src) && (src[j] == '_' || src[j] >= 'a' && src[j] <= 'z' || src[j] >= 'A' && src[j] <= 'Z' || src[j] >= '0' && src[j] <= '9') {
				j++
			}
			toks = append(toks, token{identTok, string(src[i:j])})
			i = j
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && (src[j] == '.' || src[j] == 'x' || src[j] == 'X' || src[j] >= '0' && src[j] <= '9' || src[j] >= 'a' && src[j] <= 'f' || src[j] >= 'A' && src[j] <= 'F') {
				j++
			}
			toks = append(toks, token{numberTok, string(src[i:j])})
			i = j
		case c == '.' && i+1 < len(src) && src[i+1] == '.':
			toks = append(toks, token{punctTok, ".."})
			i += 2
		default:
			toks = append(toks, token{punctTok, string(c)})
			i++
		}
	}
	return toks, true
}

// longBracket reports whether a long bracket "[[" or "[==[" opens at i, and
// its level (the number of '=').
func longBracket(src []byte, i int) (int, bool) {
	if i >= len(src) || src[i] != '[' {
		return 0, false
	}
	j := i + 1
	for j < len(src) && src[j] == '=' {
		j++
	}
	if j < len(src) && src[j] == '[' {
		return j - i - 1, true
	}
	return 0, false
}

// longEnd returns the offset just past the long bracket of the level that
// closes what opens before from.
func longEnd(src []byte, from, level int) (int, bool) {
	for i := from; i+level+1 < len(src); i++ {
		if src[i] != ']' {
			continue
		}
		j := i + 1
		for j < len(src) && src[j] == '=' {
			j++
		}
		if j-i-1 == level && j < len(src) && src[j] == ']' {
			return j + 1, true
		}
	}
	return 0, false
}
