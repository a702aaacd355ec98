package daemon

import (
	"errors"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestSchemaOption: over real UDP, a registered schema reaches the engine
// by its one-byte id (grammar, JSON for Ollama, and a MAX_TOKENS covering
// its longest answer unless the device set one); an inline schema the same
// way; an unknown id, a schema outside the subset, or both options are
// refused with UNSUPPORTED_OPTION before anything runs.
func TestSchemaOption(t *testing.T) {
	fan, err := NewJSONSchema("fan", []byte(`{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3}}}`))
	if err != nil {
		t.Fatal(err)
	}
	gbnf, err := NewGBNFSchema("yesno", `root ::= "yes" | "no"`)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEngine{}
	_, addr := startDaemon(t, Config{DefaultMaxTokens: 100, Schemas: map[uint8]Schema{1: fan, 2: gbnf}}, e)
	c := dial(t, addr, device.Config{DeviceID: "schema"})
	byID := func(id uint8) func(*serialproto.Infer) {
		return func(m *serialproto.Infer) { m.Set, m.SchemaID = m.Set.With(serialproto.OptSchema), id }
	}
	inline := func(js string) func(*serialproto.Infer) {
		return func(m *serialproto.Infer) { m.Set, m.SchemaJSON = m.Set.With(serialproto.OptSchemaJSON), js }
	}
	maxTok := func(n uint16) func(*serialproto.Infer) {
		return func(m *serialproto.Infer) { m.Set, m.MaxTokens = m.Set.With(serialproto.OptMaxTokens), n }
	}
	ok := []struct {
		name      string
		opts      []func(*serialproto.Infer)
		grammar   string
		json      string
		maxTokens int
	}{
		{"by id", []func(*serialproto.Infer){byID(1)}, fan.Grammar, string(fan.JSON), fan.MaxTokens},
		{"by id with max tokens", []func(*serialproto.Infer){byID(1), maxTok(5)}, fan.Grammar, string(fan.JSON), 5},
		{"gbnf by id", []func(*serialproto.Infer){byID(2)}, `root ::= "yes" | "no"`, "", 100},
		{"inline", []func(*serialproto.Infer){inline(`{"type": "boolean"}`)}, "root ::= (\"true\" | \"false\")\n", `{"type":"boolean"}`, 6},
		{"none", nil, "", "", 100},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := ask(t, c, "fan?", tc.opts...); err != nil {
				t.Fatal(err)
			}
			reqs := e.requests()
			o := reqs[len(reqs)-1].Options
			if o.Grammar != tc.grammar || string(o.Schema) != tc.json || o.MaxTokens != tc.maxTokens {
				t.Fatalf("engine got grammar %q schema %s max tokens %d, want %q %s %d", o.Grammar, o.Schema, o.MaxTokens, tc.grammar, tc.json, tc.maxTokens)
			}
		})
	}
	calls := e.calls.Load()
	for _, tc := range []struct {
		name string
		opts []func(*serialproto.Infer)
		text string
	}{
		{"unknown id", []func(*serialproto.Infer){byID(9)}, "no schema 9"},
		{"outside the subset", []func(*serialproto.Infer){inline(`{"type":"string","pattern":"^a"}`)}, "pattern"},
		{"not json", []func(*serialproto.Infer){inline(`{"type":`)}, "unsupported schema"},
		{"both", []func(*serialproto.Infer){byID(1), inline(`{"type":"null"}`)}, "together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ask(t, c, "fan?", tc.opts...)
			var perr *serialproto.Error
			if !errors.As(err, &perr) || perr.Code != serialproto.CodeUnsupportedOption || !strings.Contains(perr.Text, tc.text) {
				t.Fatalf("err %v, want UNSUPPORTED_OPTION mentioning %q", err, tc.text)
			}
		})
	}
	if got := e.calls.Load(); got != calls {
		t.Fatalf("refused requests reached the engine: %d calls, want %d", got, calls)
	}
}
