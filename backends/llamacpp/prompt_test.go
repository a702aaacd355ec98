package llamacpp

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native"
	"github.com/mcpd-project/mcpd/native/gguf"
)

const chatML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

func ids(toks []native.Token) []int32 {
	out := make([]int32, len(toks))
	for i, t := range toks {
		out[i] = int32(t)
	}
	return out
}

// TestAnswerTokensInNextPrompt: a conversation's next prompt starts with
// the prompt before it and then the very tokens generated for its answer,
// with the plain template and a chat template, so the sequence's KV cache
// holds all of it; an answer kept as text only is tokenised anew.
func TestAnswerTokensInNextPrompt(t *testing.T) {
	plain := gguf.TinySpec(1)
	templated := gguf.TinySpec(1)
	templated.Name, templated.ChatTemplate = "chatml", chatML
	for _, s := range []gguf.Spec{plain, templated} {
		t.Run(s.Name, func(t *testing.T) {
			e := newEngine(t, writeModel(t, s), Config{Parallel: 1, SequenceContext: 512})
			if (s.ChatTemplate != "") != (e.tmpl != "") {
				t.Fatalf("template %q used: %q", s.ChatTemplate, e.tmpl)
			}
			msgs := []backends.Message{{Role: backends.RoleSystem, Content: systemPrompt}, {Role: backends.RoleUser, Content: "Hello, world"}}
			first, err := e.tokenizePrompt(msgs)
			if err != nil {
				t.Fatal(err)
			}
			text, res, err := collect(t, e, context.Background(), backends.Request{Messages: msgs,
				Options: backends.Options{TemperatureSet: true, MaxTokens: 12}})
			if err != nil || len(res.Generated) != res.Tokens || res.Tokens == 0 {
				t.Fatalf("%q: %d tokens, generated %v: %v", text, res.Tokens, res.Generated, err)
			}
			answer := backends.Message{Role: backends.RoleAssistant, Content: text, Tokens: res.Generated}
			next := append(slices.Clone(msgs), answer, backends.Message{Role: backends.RoleUser, Content: "And now?"})
			toks, err := e.tokenizePrompt(next)
			if err != nil {
				t.Fatal(err)
			}
			want := append(ids(first), res.Generated...)
			if len(toks) <= len(want) || !slices.Equal(ids(toks[:len(want)]), want) {
				t.Fatalf("next prompt %v\ndoes not start with the prompt and the answer's tokens %v", toks, want)
			}
			answer.Tokens = nil
			retok, err := e.tokenizePrompt(append(slices.Clone(msgs), answer, next[3]))
			if err != nil {
				t.Fatal(err)
			}
			if slices.Equal(retok, toks) {
				t.Fatal("the answer tokenised anew gives the generated tokens: the test shows nothing")
			}
		})
	}
}

// TestAnswerTokens: the run of an answer's ids that is evaluated ends
// where their text stops being the answer's.
func TestAnswerTokens(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{Parallel: 1})
	text, res, err := collect(t, e, context.Background(), greedyReq("Hello, world", 12))
	if err != nil {
		t.Fatal(err)
	}
	gen := res.Generated
	t.Logf("answer %q, ids %v", text, gen)
	half := len(text) / 2
	for _, tc := range []struct {
		name    string
		m       backends.Message
		maxToks int // at most this many ids kept
		minToks int
		covered int // -1: not checked
	}{
		{"whole answer", backends.Message{Role: backends.RoleAssistant, Content: text, Tokens: gen}, len(gen), len(gen), len(text)},
		{"cut short (a stop string)", backends.Message{Role: backends.RoleAssistant, Content: text[:half], Tokens: gen}, len(gen) - 1, 0, -1},
		{"other text", backends.Message{Role: backends.RoleAssistant, Content: "something else entirely", Tokens: gen}, 0, 0, 0},
		{"ids out of range", backends.Message{Role: backends.RoleAssistant, Content: text, Tokens: []int32{-3, 1 << 30}}, 0, 0, 0},
		{"a user's message", backends.Message{Role: backends.RoleUser, Content: text, Tokens: gen}, 0, 0, 0},
		{"no ids", backends.Message{Role: backends.RoleAssistant, Content: text}, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			toks, n, err := e.answerTokens(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if len(toks) > tc.maxToks || len(toks) < tc.minToks || (tc.covered >= 0 && n != tc.covered) {
				t.Fatalf("%d ids covering %d bytes, want %d..%d ids covering %d", len(toks), n, tc.minToks, tc.maxToks, tc.covered)
			}
			if !slices.Equal(ids(toks), tc.m.Tokens[:len(toks)]) || n > len(tc.m.Content) {
				t.Fatalf("ids %v of %v, %d bytes of %d", toks, tc.m.Tokens, n, len(tc.m.Content))
			}
		})
	}
}

// TestAnswerTokensSameAnswers: an engine that evaluates each prompt whole
// and one that reuses its KV cache give the same greedy answers over a
// conversation whose answers carry their tokens, and the reusing one
// evaluates only the new message and the template around it each turn.
func TestAnswerTokensSameAnswers(t *testing.T) {
	s := gguf.TinySpec(1)
	s.Name, s.ChatTemplate = "chatml", chatML
	path := writeModel(t, s)
	whole := newEngine(t, path, Config{Parallel: 1, SequenceContext: 512, NoKVReuse: true})
	e := newEngine(t, path, Config{Parallel: 1, SequenceContext: 512})
	var a, b chat
	var prev backends.Result
	for i, user := range []string{"Hello, world", "sensor 7 humidity 40%", "What time is it?", "zzz"} {
		want, wantRes := a.turn(t, whole, user)
		got, res := b.turn(t, e, user)
		if got != want || !slices.Equal(res.Generated, wantRes.Generated) || res.PromptTokens != wantRes.PromptTokens {
			t.Fatalf("turn %d: %q %v, evaluated whole: %q %v", i+1, got, res.Generated, want, wantRes.Generated)
		}
		// All but the last token generated (never evaluated when the
		// answer ends at its length) are found in the cache.
		if i > 0 && res.PromptCached < prev.PromptTokens+prev.Tokens-1 {
			t.Errorf("turn %d: %d of %d prompt tokens cached, the turn before had %d and its answer %d",
				i+1, res.PromptCached, res.PromptTokens, prev.PromptTokens, prev.Tokens)
		}
		prev = res
	}
}

// BenchmarkTokenizePrompt: what building a 10-turn conversation's prompt
// costs when its answers (128 tokens each) carry their ids, against the
// same conversation with answers as text only.
func BenchmarkTokenizePrompt(b *testing.B) {
	e := newEngine(b, writeModel(b, gguf.TinySpec(1)), Config{Parallel: 1})
	rng := rand.New(rand.NewPCG(1, 2))
	var msgs []backends.Message
	for turn := range 10 {
		msgs = append(msgs, backends.Message{Role: backends.RoleUser, Content: fmt.Sprintf("turn %d: how warm is the east bed?", turn)})
		ts := newTextStream(nil)
		var text []byte
		ids := make([]int32, 128)
		for i := range ids {
			ids[i] = int32(32 + rng.IntN(90)) // printable byte tokens of the tiny vocabulary
			piece, err := e.model.TokenPiece(native.Token(ids[i]), false)
			if err != nil {
				b.Fatal(err)
			}
			out, _ := ts.add(piece)
			text = append(text, out...)
		}
		text = append(text, ts.flush()...)
		msgs = append(msgs, backends.Message{Role: backends.RoleAssistant, Content: string(text), Tokens: ids})
	}
	msgs = append(msgs, backends.Message{Role: backends.RoleUser, Content: "and now?"})
	asText := make([]backends.Message, len(msgs))
	for i, m := range msgs {
		m.Tokens = nil
		asText[i] = m
	}
	for _, bc := range []struct {
		name string
		msgs []backends.Message
	}{{"answers-as-ids", msgs}, {"answers-as-text", asText}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := e.tokenizePrompt(bc.msgs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
