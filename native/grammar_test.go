package native

import (
	"context"
	"errors"
	"regexp"
	"testing"
)

// sampleText decodes prompt and samples with p until the end of
// generation or n tokens, returning the text and whether it ended.
func sampleText(t *testing.T, m *Model, p SamplerParams, prompt string, n int) (string, bool) {
	t.Helper()
	c, err := m.NewContext(ContextParams{ContextSize: 256, BatchSize: 64, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := NewSampler(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	toks, err := m.Tokenize(prompt, true, false)
	if err != nil {
		t.Fatal(err)
	}
	var b Batch
	for i, tok := range toks {
		// The prompt reaches the penalty's history, never the grammar
		// (which would reject it and abort the process).
		if err := s.Accept(tok); err != nil {
			t.Fatal(err)
		}
		b.Add(tok, i, 0, i == len(toks)-1)
	}
	var out []byte
	pos := len(toks)
	for range n {
		if err := c.Decode(context.Background(), &b); err != nil {
			t.Fatal(err)
		}
		tok, err := s.Sample(c, b.Len()-1)
		if err != nil {
			t.Fatal(err)
		}
		if eog, _ := m.IsEOG(tok); eog {
			return string(out), true
		}
		piece, err := m.TokenPiece(tok, false)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, piece...)
		b.Reset()
		b.Add(tok, pos, 0, true)
		pos++
	}
	return string(out), false
}

// TestSamplerGrammar: under a grammar the tiny random model, which
// otherwise emits garbage, emits exactly the grammar's language and then
// ends, for every seed and for greedy sampling.
func TestSamplerGrammar(t *testing.T) {
	m := load(t, tinyModel(t))
	const gbnf = `root ::= "{\"fan\":" [0-3] ",\"on\":" ("true" | "false") ",\"name\":\"" [a-zé]{1,6} "\"}"` + "\n"
	want := regexp.MustCompile(`^\{"fan":[0-3],"on":(true|false),"name":"[a-zé]{1,6}"\}$`)
	free, _ := sampleText(t, m, SamplerParams{Temperature: 1, Seed: 1}, "Fan?", 24)
	if want.MatchString(free) {
		t.Fatalf("unconstrained output %q already matches: the test proves nothing", free)
	}
	params := []SamplerParams{{Grammar: gbnf, Model: m}} // greedy
	for seed := range uint32(20) {
		params = append(params, SamplerParams{Temperature: 1.5, TopK: 40, RepeatPenalty: 1.3, Seed: seed, Grammar: gbnf, Model: m})
	}
	for _, p := range params {
		got, ended := sampleText(t, m, p, "Fan?", 64)
		if !ended || !want.MatchString(got) {
			t.Errorf("seed %d: %q (ended %v), want the grammar's language and the end", p.Seed, got, ended)
		}
	}
}

func TestSamplerGrammarRejects(t *testing.T) {
	m := load(t, tinyModel(t))
	for _, tt := range []struct {
		name string
		p    SamplerParams
		want error
	}{
		{"syntax", SamplerParams{Grammar: `root ::= "a`, Model: m}, ErrGrammar},
		{"no root", SamplerParams{Grammar: `x ::= "a"`, Model: m}, ErrGrammar},
		{"left recursion", SamplerParams{Grammar: "root ::= root \"a\" | \"b\"\n", Model: m}, ErrGrammar},
		{"no model", SamplerParams{Grammar: `root ::= "a"`}, ErrInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSampler(tt.p)
			if !errors.Is(err, tt.want) {
				s.Close()
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}
