// Package glob matches Redis glob-style patterns exactly as Redis does
// (util.c, stringmatchlen), for PSUBSCRIBE patterns and funnel's key rules:
// '*' any run, '?' one byte, '[...]' a set with ranges and '^' negation,
// '\' escapes the next byte. Matching is byte-wise, case-sensitive.
package glob

// Match reports whether s matches pattern.
func Match(pattern, s string) bool {
	skip := false
	return match(pattern, s, &skip)
}

// match is a port of stringmatchlen_impl. at reads the pattern as the C
// code does, with a NUL past its end; skip stops retrying longer matches of
// an earlier '*' once the rest of the pattern matched nowhere.
func match(pat, str string, skip *bool) bool {
	at := func(i int) byte {
		if i < len(pat) {
			return pat[i]
		}
		return 0
	}
	p, s := 0, 0
	for len(pat)-p > 0 && len(str)-s > 0 {
		switch pat[p] {
		case '*':
			for len(pat)-p > 0 && at(p+1) == '*' {
				p++
			}
			if len(pat)-p == 1 {
				return true
			}
			for len(str)-s > 0 {
				if match(pat[p+1:], str[s:], skip) {
					return true
				}
				if *skip {
					return false
				}
				s++
			}
			*skip = true
			return false
		case '?':
			s++
		case '[':
			p++
			not := at(p) == '^'
			if not {
				p++
			}
			matched := false
			for {
				if at(p) == '\\' && len(pat)-p >= 2 {
					p++
					if pat[p] == str[s] {
						matched = true
					}
				} else if at(p) == ']' {
					break
				} else if len(pat)-p <= 0 {
					p-- // an unterminated set ends with the pattern
					break
				} else if len(pat)-p >= 3 && pat[p+1] == '-' {
					lo, hi, c := pat[p], pat[p+2], str[s]
					if lo > hi {
						lo, hi = hi, lo
					}
					p += 2
					if c >= lo && c <= hi {
						matched = true
					}
				} else if pat[p] == str[s] {
					matched = true
				}
				p++
			}
			if not {
				matched = !matched
			}
			if !matched {
				return false
			}
			s++
		case '\\':
			if len(pat)-p >= 2 {
				p++
			}
			if pat[p] != str[s] {
				return false
			}
			s++
		default:
			if pat[p] != str[s] {
				return false
			}
			s++
		}
		p++
		if len(str)-s == 0 {
			for at(p) == '*' {
				p++
			}
			break
		}
	}
	return len(pat)-p == 0 && len(str)-s == 0
}
