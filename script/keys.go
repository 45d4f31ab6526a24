package script

import "strconv"

// KeyWrites says which of a script's declared keys it may write, and which
// it may give an expiry, from its text. The zero value, and any script
// funnel cannot follow, may write every key and give each an expiry.
type KeyWrites struct {
	known   bool         // the analysis followed every use of KEYS
	written map[int]bool // 1-based KEYS indices that may be written
	expired map[int]bool // 1-based KEYS indices that may be given an expiry
}

// MayWrite reports whether the script may write KEYS[i] (1-based).
func (k KeyWrites) MayWrite(i int) bool { return !k.known || k.written[i] }

// MayExpire reports whether the script may give KEYS[i] (1-based) an
// expiry: whether the key reaches anything but a read or a command that
// keepsTTL said cannot set one.
func (k KeyWrites) MayExpire(i int) bool { return !k.known || k.expired[i] }

// WrittenKeys finds which KEYS[n] a script may write. A key only counts as
// read when every path its value takes through the text ends as the key of
// a read-only command, at a call of redis.call or redis.pcall (or an alias,
// see ReadOnly) whose command is a string literal:
//
//	local metaKey = KEYS[9]                    -- an alias: its uses are followed
//	getQueueMetadata(KEYS[9], ...)              -- a function of the script: its parameter is followed
//	rcall("HMGET", queueMetaKey, "paused")      -- a read
//
// Anything else a key's value meets (a write command, a function the
// script does not define, a table, a concatenation, a return) counts as a
// write of that key. KEYS indexed by anything but a number literal, or
// used other than as KEYS[n] or #KEYS, makes every key count as written.
// Names are followed through the whole text, without scopes, which can
// only find more uses than there are: the answer errs towards "may write".
//
// keepsTTL names the commands that may write a key but never give it an
// expiry (HSET, LPUSH, DEL ...): a key that reaches only reads and those is
// written but keeps having no expiry.
func WrittenKeys(body []byte, readOnly, keepsTTL func(name string) bool) KeyWrites {
	toks, ok := tokenize(body)
	if !ok {
		return KeyWrites{}
	}
	a := keyAnalysis{toks: toks, accept: readOnly, aliases: callAliases(toks), funcs: map[string][][]string{}}
	a.findFuncs()
	noExpiry := a
	noExpiry.accept = func(name string) bool { return readOnly(name) || keepsTTL(name) }
	w := KeyWrites{known: true, written: map[int]bool{}, expired: map[int]bool{}}
	for i, t := range toks {
		if t.kind != identTok || t.text != "KEYS" || prevIs(toks, i, ".") || prevIs(toks, i, ":") {
			continue
		}
		if prevIs(toks, i, "#") {
			continue // the number of keys
		}
		if !next(toks, i+1, "[") || i+3 >= len(toks) || toks[i+2].kind != numberTok || !next(toks, i+3, "]") {
			return KeyWrites{} // KEYS[i], unpack(KEYS), KEYS = ...: not followed
		}
		n, err := strconv.Atoi(toks[i+2].text)
		if err != nil {
			return KeyWrites{}
		}
		if !a.onlyRead(i, i+4, map[string]bool{}) {
			w.written[n] = true
		}
		if !noExpiry.onlyRead(i, i+4, map[string]bool{}) {
			w.expired[n] = true
		}
	}
	return w
}

// keyAnalysis follows a key's value through a script's tokens, to the
// commands it reaches: onlyRead reports whether accept takes every one.
type keyAnalysis struct {
	toks    []token
	accept  func(string) bool
	aliases map[string]bool       // local names of redis.call and redis.pcall
	funcs   map[string][][]string // the script's functions: their parameter lists
}

// maxFollowed bounds how many names one key is followed through.
const maxFollowed = 64

// callAliases returns the names "local NAME = redis.call" (or pcall) binds.
func callAliases(toks []token) map[string]bool {
	aliases := map[string]bool{}
	for i := 3; i+2 < len(toks); i++ {
		if toks[i].kind == identTok && toks[i].text == "redis" && next(toks, i+1, ".") &&
			(nextIdent(toks, i+2, "call") || nextIdent(toks, i+2, "pcall")) &&
			toks[i-1].text == "=" && toks[i-2].kind == identTok && toks[i-3].text == "local" && !next(toks, i+3, "(") {
			aliases[toks[i-2].text] = true
		}
	}
	return aliases
}

// findFuncs records every "function NAME(params)" and "local function
// NAME(params)" of the script.
func (a *keyAnalysis) findFuncs() {
	toks := a.toks
	for i := 0; i+2 < len(toks); i++ {
		if toks[i].kind != identTok || toks[i].text != "function" || toks[i+1].kind != identTok || !next(toks, i+2, "(") {
			continue
		}
		var params []string
		for j := i + 3; j < len(toks) && !next(toks, j, ")"); j++ {
			switch {
			case toks[j].kind == identTok:
				params = append(params, toks[j].text)
			case next(toks, j, "."):
				params = append(params, "...") // varargs: not followed
			}
		}
		a.funcs[toks[i+1].text] = append(a.funcs[toks[i+1].text], params)
	}
}

// onlyRead reports whether the value of the expression toks[from:to] is
// only ever used as the key of a read-only command.
func (a *keyAnalysis) onlyRead(from, to int, followed map[string]bool) bool {
	toks := a.toks
	// "local NAME = <expr>" or "NAME = <expr>", ending the statement.
	if from >= 2 && prevIs(toks, from, "=") && toks[from-2].kind == identTok && !prevIs(toks, from-2, ".") &&
		!prevIs(toks, from-2, ",") && !prevIs(toks, from-2, ":") && endsExpr(toks, to) {
		return a.nameOnlyRead(toks[from-2].text, followed)
	}
	// An argument of a call: it must be a whole argument.
	if !(prevIs(toks, from, "(") || prevIs(toks, from, ",")) || !(next(toks, to, ",") || next(toks, to, ")")) {
		return false
	}
	open, pos := callOpen(toks, from)
	if open < 1 || toks[open-1].kind != identTok || prevIs(toks, open-1, ".") || prevIs(toks, open-1, ":") {
		// redis.call(...) itself: "redis" "." "call" "(".
		if open >= 3 && toks[open-3].text == "redis" && next(toks, open-2, ".") &&
			(nextIdent(toks, open-1, "call") || nextIdent(toks, open-1, "pcall")) && !prevIs(toks, open-3, ".") {
			return a.readCall(open, pos)
		}
		return false
	}
	callee := toks[open-1].text
	if a.aliases[callee] {
		return a.readCall(open, pos)
	}
	defs, ok := a.funcs[callee]
	if !ok || prevIs(toks, open-1, "function") {
		return false
	}
	for _, params := range defs {
		if pos >= len(params) || params[pos] == "..." || !a.nameOnlyRead(params[pos], followed) {
			return false
		}
	}
	return true
}

// readCall reports whether the argument at pos of the command call whose
// "(" is at open is an argument of a command named by a literal that
// accept takes.
func (a *keyAnalysis) readCall(open, pos int) bool {
	toks := a.toks
	if pos == 0 || open+2 >= len(toks) || toks[open+1].kind != stringTok || !next(toks, open+2, ",") {
		return false
	}
	return a.accept(lower(toks[open+1].text))
}

// nameOnlyRead reports whether every use of a name is only read.
func (a *keyAnalysis) nameOnlyRead(name string, followed map[string]bool) bool {
	if followed[name] {
		return true // being followed already: its other uses decide
	}
	if len(followed) >= maxFollowed || name == "KEYS" || name == "ARGV" || a.aliases[name] {
		return false
	}
	followed[name] = true
	toks := a.toks
	for i, t := range toks {
		if t.kind != identTok || t.text != name || prevIs(toks, i, ".") || prevIs(toks, i, ":") {
			continue
		}
		if a.declares(i) {
			continue
		}
		if !a.onlyRead(i, i+1, followed) {
			return false
		}
	}
	return true
}

// declares reports whether toks[i] names a variable being declared or
// assigned, rather than used: "local NAME", "NAME =" (not "=="), a
// parameter, a for variable or a function's name.
func (a *keyAnalysis) declares(i int) bool {
	toks := a.toks
	switch {
	case prevIs(toks, i, "local") || prevIs(toks, i, "function"):
		return true
	case next(toks, i+1, "=") && !next(toks, i+2, "="):
		return !prevIs(toks, i, "=") && !prevIs(toks, i, "<") && !prevIs(toks, i, ">") && !prevIs(toks, i, "~")
	}
	// A parameter list: "function NAME(" ... or "for" ... "in"/"=".
	for j := i - 1; j >= 0; j-- {
		switch {
		case toks[j].kind == identTok && toks[j].text == "in":
			return false // "for x in NAME": a use
		case toks[j].kind == identTok || next(toks, j, ","):
			continue
		case next(toks, j, "(") && j >= 2 && toks[j-2].text == "function":
			return true
		case next(toks, j, "(") && j >= 1 && toks[j-1].text == "function":
			return true // function(a, b) as a value
		}
		return j >= 0 && toks[j].text == "for"
	}
	return false
}

// callOpen finds the "(" of the call whose argument starts at from, and
// the argument's position in it.
func callOpen(toks []token, from int) (open, pos int) {
	depth := 0
	for j := from - 1; j >= 0; j-- {
		switch toks[j].text {
		case ")", "]", "}":
			if toks[j].kind == punctTok {
				depth++
			}
		case "(", "[", "{":
			if toks[j].kind != punctTok {
				continue
			}
			if depth == 0 {
				if toks[j].text != "(" {
					return -1, 0
				}
				return j, pos
			}
			depth--
		case ",":
			if depth == 0 && toks[j].kind == punctTok {
				pos++
			}
		}
	}
	return -1, 0
}

// endsExpr reports whether an expression ends at toks[i]: what follows
// cannot continue it (an operator, an index, a call).
func endsExpr(toks []token, i int) bool {
	if i >= len(toks) {
		return true
	}
	t := toks[i]
	if t.kind == punctTok {
		return t.text == ";" || t.text == ")"
	}
	if t.kind == identTok {
		switch t.text {
		case "and", "or":
			return false
		}
		return true
	}
	return false
}

func prevIs(toks []token, i int, text string) bool {
	return i > 0 && toks[i-1].text == text && toks[i-1].kind != stringTok
}
