package grammar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// GBNF is the grammar of the schema's answers, root rule "root".
func (s *Schema) GBNF() string {
	g := &gen{names: map[string]string{}}
	root := g.expr(s.root)
	var b strings.Builder
	b.WriteString("root ::= " + root + "\n")
	for _, r := range g.rules {
		b.WriteString(r + "\n")
	}
	return b.String()
}

type gen struct {
	rules []string
	names map[string]string // rule body → name
}

// rule names body once and returns the name.
func (g *gen) rule(body string) string {
	if n, ok := g.names[body]; ok {
		return n
	}
	n := "r" + strconv.Itoa(len(g.rules))
	g.names[body] = n
	g.rules = append(g.rules, n+" ::= "+body)
	return n
}

// lit is a GBNF string literal of s, which is ASCII (marshal): printable
// characters as they are (but " and \), others as \xHH.
func lit(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7F:
			fmt.Fprintf(&b, "\\x%02X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Pieces shared by every grammar.
const (
	gChar   = `[ !#-\[\]-~] | "\\" ["\\/bfnrt]`
	gDigits = `[0-9]`
)

func (g *gen) expr(n *node) string {
	switch n.kind {
	case kObject:
		if len(n.props) == 0 {
			return `"{}"`
		}
		parts := make([]string, 0, len(n.props))
		for i, p := range n.props {
			key, _ := marshal(p.name)
			sep := ","
			if i == 0 {
				sep = "{"
			}
			parts = append(parts, lit(sep+string(key)+":")+" "+g.expr(p.node))
		}
		return g.rule(strings.Join(parts, " ") + ` "}"`)
	case kArray:
		if n.maxItems == 0 {
			return `"[]"`
		}
		item := g.expr(n.items)
		more := ""
		switch lo, hi := max(n.minItems-1, 0), n.maxItems-1; {
		case hi == 0:
		case lo == hi:
			more = fmt.Sprintf(` ("," %s){%d}`, item, hi)
		default:
			more = fmt.Sprintf(` ("," %s){%d,%d}`, item, lo, hi)
		}
		if n.minItems == 0 {
			return g.rule(`"[" (` + item + more + `)? "]"`)
		}
		return g.rule(`"[" ` + item + more + ` "]"`)
	case kString:
		ch := g.rule(gChar)
		if n.maxLen == 0 {
			return `"\"\""`
		}
		return g.rule(fmt.Sprintf(`"\"" %s{%d,%d} "\""`, ch, n.minLen, n.maxLen))
	case kInteger:
		if n.min != nil && n.max != nil {
			alts := make([]string, 0, *n.max-*n.min+1)
			for i := *n.min; i <= *n.max; i++ {
				alts = append(alts, lit(strconv.FormatInt(i, 10)))
			}
			return g.rule(strings.Join(alts, " | "))
		}
		nat := g.rule(fmt.Sprintf(`"0" | [1-9] %s{0,%d}`, gDigits, maxIntDigits-1))
		if n.min != nil {
			return nat
		}
		return g.rule(`"-"? ` + nat)
	case kNumber:
		nat := g.rule(fmt.Sprintf(`"0" | [1-9] %s{0,%d}`, gDigits, maxIntDigits-1))
		return g.rule(fmt.Sprintf(`"-"? %s ("." %s{1,%d})?`, nat, gDigits, maxFracDigits))
	case kBoolean:
		return `("true" | "false")`
	case kNull:
		return `"null"`
	case kEnum:
		alts := make([]string, len(n.literals))
		for i, l := range n.literals {
			alts[i] = lit(string(l))
		}
		return g.rule(strings.Join(alts, " | "))
	case kAnyOf:
		alts := make([]string, len(n.anyOf))
		for i, a := range n.anyOf {
			alts[i] = g.expr(a)
		}
		return g.rule(strings.Join(alts, " | "))
	}
	panic("grammar: unknown node kind") // unreachable: parse makes every node
}

// marshal is minified, 7-bit ASCII JSON as the grammar writes it: no
// HTML escaping ("<" stays "<"), and every non-ASCII character as a \uXXXX
// escape (a surrogate pair above U+FFFF). Why ASCII: llama.cpp's grammar
// matcher decodes UTF-8 without rejecting overlong or malformed sequences,
// so only an all-ASCII grammar guarantees valid UTF-8 — and a device then
// needs no UTF-8 decoder at all.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	raw := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	out := make([]byte, 0, len(raw))
	for _, r := range string(raw) {
		switch {
		case r < utf8.RuneSelf:
			out = append(out, byte(r))
		case r > 0xFFFF:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, "\\u%04x\\u%04x", r1, r2)
		default:
			out = fmt.Appendf(out, "\\u%04x", r)
		}
	}
	return out, nil
}
