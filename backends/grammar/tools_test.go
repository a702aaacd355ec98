package grammar

import (
	"errors"
	"strings"
	"testing"
)

func mustParse(t testing.TB, s string) *Schema {
	t.Helper()
	sc, err := Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func demoTools(t testing.TB) []Tool {
	return []Tool{
		{Name: "soil", Description: "soil moisture of a bed, percent", Args: mustParse(t, `{"type":"object","properties":{"bed":{"type":"integer","minimum":0,"maximum":3}}}`)},
		{Name: "relay", Description: "switch the pump", Args: mustParse(t, `{"type":"object","properties":{"on":{"type":"boolean"}}}`)},
		{Name: "relay2", Description: "no arguments"},
	}
}

func TestToolGrammar(t *testing.T) {
	g, err := ToolGrammar(demoTools(t), false)
	if err != nil {
		t.Fatal(err)
	}
	must, err := ToolGrammar(demoTools(t), true)
	if err != nil || !strings.HasPrefix(must, "root ::= r3\n") {
		t.Fatalf("mustCall grammar %q, %v", must, err)
	}
	for _, want := range []string{
		`root ::= r3 | [^<] [^\x00]*`,
		`r3 ::= "<call>" ("\"soil\"," r1 | "\"relay\"," r2 | "\"relay2\"," "{}") "</call>"`,
	} {
		if !strings.Contains(g, want+"\n") {
			t.Errorf("grammar lacks %q:\n%s", want, g)
		}
	}
	for _, tc := range []struct {
		name  string
		tools []Tool
	}{
		{"none", nil},
		{"bad name", []Tool{{Name: "Soil"}}},
		{"duplicate", []Tool{{Name: "a"}, {Name: "a"}}},
		{"array args", []Tool{{Name: "a", Args: mustParse(t, `{"type":"array","items":{"type":"null"}}`)}}},
		{"too many", make([]Tool, MaxTools+1)},
	} {
		if _, err := ToolGrammar(tc.tools, false); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: %v, want ErrUnsupported", tc.name, err)
		}
	}
}

func TestParseCall(t *testing.T) {
	tools := demoTools(t)
	for _, tc := range []struct {
		out  string
		tool int
		args string
		err  error
	}{
		{`<call>"soil",{"bed":2}</call>`, 0, `{"bed":2}`, nil},
		{`<call>"relay",{"on":true}</call>`, 1, `{"on":true}`, nil},
		{`<call>"relay2",{}</call>`, 2, `{}`, nil},
		{`The beds are fine.`, 0, "", ErrNoCall},
		{`<call>"soil",{"bed":7}</call>`, 0, "", ErrInvalid},
		{`<call>"relay2",{"x":1}</call>`, 0, "", ErrInvalid},
		{`<call>"pump",{}</call>`, 0, "", ErrInvalid},
		{`<call>"soil",{"bed":2}`, 0, "", ErrInvalid},
	} {
		tool, args, err := ParseCall(tools, []byte(tc.out))
		if !errors.Is(err, tc.err) || (err == nil && (tool != tc.tool || string(args) != tc.args)) {
			t.Errorf("ParseCall(%s) = %d %s %v, want %d %s %v", tc.out, tool, args, err, tc.tool, tc.args, tc.err)
		}
	}
}

// FuzzParseCall: any output is judged without panicking, and a call it
// accepts has arguments its tool's schema admits.
func FuzzParseCall(f *testing.F) {
	for _, s := range []string{`<call>"soil",{"bed":2}</call>`, `<call>"relay2",{}</call>`, "text", `<call>"relay",{"on":tru`} {
		f.Add([]byte(s))
	}
	tools := demoTools(f)
	f.Fuzz(func(t *testing.T, out []byte) {
		i, args, err := ParseCall(tools, out)
		if err != nil {
			if !errors.Is(err, ErrNoCall) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v of no class", err)
			}
			return
		}
		if tools[i].Args != nil {
			if err := tools[i].Args.Validate(args); err != nil {
				t.Fatalf("accepted arguments %q: %v", args, err)
			}
		}
	})
}
