package grammar

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// Tool is a device tool as the model sees it (docs/protocol.md §16, a
// draft): a name, a one-line description and the schema of its arguments
// (an object schema of the subset; nil for a tool without arguments).
type Tool struct {
	Name        string
	Description string
	Args        *Schema
}

// Call markers of the in-process call format (§16): a call is exactly
// <call>"NAME",ARGS</call>, ARGS being minified JSON of the tool's schema
// ({} for none).
const (
	callOpen  = "<call>"
	callClose = "</call>"
)

// MaxTools is the most tools one grammar offers (§16: a TOOLS message
// declares at most 16).
const MaxTools = 16

// ErrNoCall: the output is an answer, not a call.
var ErrNoCall = errors.New("grammar: not a tool call")

func validToolName(n string) bool {
	if n == "" || len(n) > 32 {
		return false
	}
	for _, c := range []byte(n) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ToolGrammar is the GBNF the in-process engine samples the start of an
// answer under when a request may call tools: either one complete call of
// a declared tool with arguments of its schema, or an answer in text that
// does not begin with "<" (and then anything). The call alternative is
// bounded, so a model that starts a call finishes it. With mustCall the
// text alternative goes: the model must call one of the tools.
func ToolGrammar(tools []Tool, mustCall bool) (string, error) {
	if len(tools) == 0 || len(tools) > MaxTools {
		return "", fmt.Errorf("%w: %d tools, want 1..%d", ErrUnsupported, len(tools), MaxTools)
	}
	g := &gen{names: map[string]string{}}
	alts := make([]string, len(tools))
	seen := map[string]bool{}
	for i, t := range tools {
		if !validToolName(t.Name) || seen[t.Name] {
			return "", fmt.Errorf("%w: tool name %q (1..32 of a-z 0-9 _ -, unique)", ErrUnsupported, t.Name)
		}
		seen[t.Name] = true
		args := `"{}"`
		if t.Args != nil {
			if t.Args.root.kind != kObject {
				return "", fmt.Errorf("%w: tool %s: arguments must be an object schema", ErrUnsupported, t.Name)
			}
			args = g.expr(t.Args.root)
		}
		alts[i] = lit(`"`+t.Name+`",`) + " " + args
	}
	call := g.rule(lit(callOpen) + " (" + strings.Join(alts, " | ") + ") " + lit(callClose))
	var b strings.Builder
	if mustCall {
		b.WriteString("root ::= " + call + "\n")
	} else {
		b.WriteString("root ::= " + call + " | [^<] [^\\x00]*\n")
	}
	for _, r := range g.rules {
		b.WriteString(r + "\n")
	}
	return b.String(), nil
}

// ParseCall reads a generated output in the call format: the index of the
// tool called and its arguments, checked against the tool's schema.
// ErrNoCall when the output is an answer instead; ErrInvalid when it looks
// like a call but is not a valid one (a model sampled without the
// grammar, as Ollama's are, may write such).
func ParseCall(tools []Tool, out []byte) (int, []byte, error) {
	body, ok := bytes.CutPrefix(out, []byte(callOpen))
	if !ok {
		return 0, nil, ErrNoCall
	}
	body, ok = bytes.CutSuffix(body, []byte(callClose))
	if !ok {
		return 0, nil, fmt.Errorf("%w: call not closed", ErrInvalid)
	}
	for i, t := range tools {
		args, ok := bytes.CutPrefix(body, []byte(`"`+t.Name+`",`))
		if !ok {
			continue
		}
		if t.Args == nil {
			if string(args) != "{}" {
				return 0, nil, fmt.Errorf("%w: tool %s takes no arguments", ErrInvalid, t.Name)
			}
			return i, args, nil
		}
		if err := t.Args.Validate(args); err != nil {
			return 0, nil, fmt.Errorf("tool %s: %w", t.Name, err)
		}
		return i, args, nil
	}
	return 0, nil, fmt.Errorf("%w: no declared tool named in %.40q", ErrInvalid, body)
}
