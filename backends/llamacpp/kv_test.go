package llamacpp

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native/gguf"
)

// chat is one device's conversation: its messages so far.
type chat struct {
	msgs []backends.Message
	// retokenise keeps answers as text only, as a client without the
	// engine's token ids (an HTTP API's) does.
	retokenise bool
}

// turn asks e for the next answer to user and appends both to the chat.
func (c *chat) turn(t *testing.T, e *Engine, user string) (string, backends.Result) {
	t.Helper()
	c.msgs = append(c.msgs, backends.Message{Role: backends.RoleUser, Content: user})
	req := backends.Request{Messages: c.msgs, Options: backends.Options{TemperatureSet: true, MaxTokens: 12}}
	text, res, err := collect(t, e, context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	answer := backends.Message{Role: backends.RoleAssistant, Content: text, Tokens: res.Generated}
	if c.retokenise {
		answer.Tokens = nil
	}
	c.msgs = append(c.msgs, answer)
	return text, res
}

const systemPrompt = "You are a greenhouse controller. Answer briefly; name the sensor and unit."

// The conversations the tests play: which chat speaks, and what it says.
type line struct {
	chat int
	user string
}

// halve drops the older half of the chat's history in whole turns, as the
// daemon does when a conversation outgrows its window or the context
// (daemon/session.go); a system prompt stays.
func (c *chat) halve() {
	var system []backends.Message
	history := c.msgs
	if len(history) > 0 && history[0].Role == backends.RoleSystem {
		system, history = history[:1], history[1:]
	}
	keep := len(history) / 2 &^ 1
	c.msgs = append(append([]backends.Message(nil), system...), history[len(history)-keep:]...)
}

// play runs the lines on e and returns each answer and result; before the
// lines whose index halveAt holds, the speaking chat's history halves.
func play(t *testing.T, e *Engine, system []bool, retokenise bool, lines []line, halveAt ...int) ([]string, []backends.Result) {
	t.Helper()
	chats := make([]chat, len(system))
	for i, s := range system {
		chats[i].retokenise = retokenise
		if s {
			chats[i].msgs = []backends.Message{{Role: backends.RoleSystem, Content: systemPrompt}}
		}
	}
	var texts []string
	var results []backends.Result
	for i, l := range lines {
		if slices.Contains(halveAt, i) {
			chats[l.chat].halve()
		}
		text, res := chats[l.chat].turn(t, e, l.user)
		texts = append(texts, text)
		results = append(results, res)
	}
	return texts, results
}

// TestKVReuse: a conversation's later turns evaluate only what is new,
// conversations that push each other out of the cache are recomputed, a
// second device's system prompt is copied from the first's sequence — and
// the greedy answers are byte for byte those of an engine that evaluates
// every prompt whole.
func TestKVReuse(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	tests := []struct {
		name       string
		parallel   int
		system     []bool
		retokenise bool
		lines      []line
		halveAt    []int // lines before which the chat's history halves
		check      func(t *testing.T, res []backends.Result, st Stats)
	}{
		{
			// Each turn finds the turn before whole, its answer too: the
			// answer comes back as the tokens generated for it. Only the
			// last token generated was never evaluated, when the answer
			// ended at its length.
			name: "one chat", parallel: 2, system: []bool{false},
			lines: []line{{0, "Hello, world"}, {0, "sensor 7 humidity 40%"}, {0, "What time is it?"}, {0, "zzz"}},
			check: func(t *testing.T, res []backends.Result, st Stats) {
				for i := 1; i < len(res); i++ {
					if before := res[i-1].PromptTokens + res[i-1].Tokens - 1; res[i].PromptCached < before {
						t.Errorf("turn %d: %d of %d prompt tokens cached, the turn before had %d and its answer %d", i+1,
							res[i].PromptCached, res[i].PromptTokens, res[i-1].PromptTokens, res[i-1].Tokens)
					}
				}
				if st.KVDropped > int64(len(res)) {
					t.Errorf("%d cached tokens dropped: more than one a turn", st.KVDropped)
				}
			},
		},
		{
			// Answers kept as text are tokenised anew and may differ from
			// the tokens generated: all of the last prompt is kept.
			name: "one chat, answers as text", parallel: 2, system: []bool{false}, retokenise: true,
			lines: []line{{0, "Hello, world"}, {0, "sensor 7 humidity 40%"}, {0, "What time is it?"}, {0, "zzz"}},
			check: func(t *testing.T, res []backends.Result, st Stats) {
				for i := 1; i < len(res); i++ {
					if res[i].PromptCached < res[i-1].PromptTokens {
						t.Errorf("turn %d: %d of %d prompt tokens cached, the turn before had %d", i+1,
							res[i].PromptCached, res[i].PromptTokens, res[i-1].PromptTokens)
					}
				}
				if st.KVDropped > int64(len(res))*12 {
					t.Errorf("%d cached tokens dropped: more than the answers", st.KVDropped)
				}
			},
		},
		{
			name: "evicted", parallel: 1, system: []bool{false, false},
			lines: []line{{0, "Hello, world"}, {1, "the quick brown fox"}, {0, "sensor 7 humidity 40%"},
				{1, "What time is it?"}, {0, "zzz"}},
			check: func(t *testing.T, res []backends.Result, st Stats) {
				if st.KVDropped == 0 {
					t.Error("one sequence for two chats dropped nothing")
				}
			},
		},
		{
			name: "shared system prompt", parallel: 3, system: []bool{true, true, false},
			lines: []line{{0, "What is the temperature in the east bed right now, please?"}, {1, "Humidity?"},
				{0, "And in the west bed?"}, {2, "Hello"}, {1, "Soil moisture?"}},
			check: func(t *testing.T, res []backends.Result, st Stats) {
				if st.KVCopies == 0 {
					t.Error("no prefix copied between sequences")
				}
				// The second chat's first turn found the system prompt.
				if res[1].PromptCached < res[1].PromptTokens/2 {
					t.Errorf("second device's first turn: %d of %d prompt tokens cached", res[1].PromptCached, res[1].PromptTokens)
				}
				// And the first chat kept its own sequence meanwhile.
				if res[2].PromptCached < res[0].PromptTokens {
					t.Errorf("first chat's second turn: %d of %d cached, the first turn had %d",
						res[2].PromptCached, res[2].PromptTokens, res[0].PromptTokens)
				}
			},
		},
		{
			// The daemon's window drops the older half of a chat: the
			// prompt then differs from the cache after the system
			// prompt, and the turns after it reuse the halved prompt.
			name: "halved history", parallel: 2, system: []bool{true},
			lines: []line{{0, "Hello, world"}, {0, "sensor 7 humidity 40%"}, {0, "What time is it?"},
				{0, "zzz"}, {0, "east bed?"}, {0, "west bed?"}},
			halveAt: []int{4},
			check: func(t *testing.T, res []backends.Result, st Stats) {
				if res[4].PromptCached == 0 || res[4].PromptCached >= res[3].PromptTokens {
					t.Errorf("halved turn: %d of %d prompt tokens cached, the turn before had %d",
						res[4].PromptCached, res[4].PromptTokens, res[3].PromptTokens)
				}
				if res[5].PromptCached < res[4].PromptTokens+res[4].Tokens-1 {
					t.Errorf("turn after the halving: %d of %d prompt tokens cached, the halved turn had %d",
						res[5].PromptCached, res[5].PromptTokens, res[4].PromptTokens)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			whole := newEngine(t, path, Config{Parallel: tc.parallel, NoKVReuse: true, SequenceContext: 512})
			want, wantRes := play(t, whole, tc.system, tc.retokenise, tc.lines, tc.halveAt...)
			for i, r := range wantRes {
				if r.PromptCached != 0 {
					t.Fatalf("NoKVReuse: turn %d had %d prompt tokens cached", i+1, r.PromptCached)
				}
			}
			e := newEngine(t, path, Config{Parallel: tc.parallel, SequenceContext: 512})
			got, res := play(t, e, tc.system, tc.retokenise, tc.lines, tc.halveAt...)
			for i := range want {
				if got[i] != want[i] || res[i].Tokens != wantRes[i].Tokens || res[i].Stop != wantRes[i].Stop {
					t.Errorf("line %d: %q (%d tokens), evaluated whole: %q (%d)", i+1, got[i], res[i].Tokens,
						want[i], wantRes[i].Tokens)
				}
				if res[i].PromptTokens != wantRes[i].PromptTokens {
					t.Errorf("line %d: %d prompt tokens, evaluated whole: %d", i+1, res[i].PromptTokens, wantRes[i].PromptTokens)
				}
			}
			st := e.Stats()
			if st.PromptCached == 0 || st.PromptCached >= st.PromptTokens {
				t.Errorf("stats: %d of %d prompt tokens cached", st.PromptCached, st.PromptTokens)
			}
			if testing.Verbose() {
				var b strings.Builder
				for _, r := range res {
					fmt.Fprintf(&b, " %d/%d", r.PromptCached, r.PromptTokens)
				}
				t.Logf("cached/prompt per line:%s; %+v", b.String(), st)
			}
			tc.check(t, res, st)
		})
	}
}

// TestKVBudget: with a shared budget too small for two conversations'
// caches, the least recently used one is cleared when the second ends; its
// next turn is evaluated again, with the answer of an engine that
// evaluates every prompt whole, and the budget is never left over.
func TestKVBudget(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	ref := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512})
	(&chat{}).turn(t, ref, "What is the temperature in the east bed right now, please?")
	one := ref.KVStats().Bytes
	if one == 0 {
		t.Fatal("a finished request's cache counts no bytes")
	}
	budget := backends.NewBudget(one * 3 / 2)
	e := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512, Budget: budget})
	whole := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512, NoKVReuse: true})
	a, b := &chat{}, &chat{}
	a.turn(t, e, "What is the temperature in the east bed right now, please?")
	if st := e.KVStats(); st.Evictions != 0 || st.Bytes != one || budget.Used() != one {
		t.Fatalf("one conversation: %+v, budget used %d of %d", st, budget.Used(), budget.Limit())
	}
	b.turn(t, e, "Is the west bed's soil moisture sensor reading too low today?")
	st := e.KVStats()
	if st.Evictions != 1 || budget.Used() > budget.Limit() || st.Bytes != budget.Used() {
		t.Fatalf("two conversations: %+v, budget used %d of %d", st, budget.Used(), budget.Limit())
	}
	cold := &chat{msgs: append([]backends.Message(nil), a.msgs...)}
	got, res := a.turn(t, e, "And in the west bed?")
	want, _ := cold.turn(t, whole, "And in the west bed?")
	if got != want {
		t.Errorf("after the eviction: %q, evaluated whole: %q", got, want)
	}
	if first := res.PromptTokens - 20; res.PromptCached > first/2 {
		t.Errorf("the evicted conversation's turn found %d of %d prompt tokens cached", res.PromptCached, res.PromptTokens)
	}
	if st := e.KVStats(); st.Hits+st.Misses != 3 || st.Misses == 0 {
		t.Errorf("hits and misses: %+v", st)
	}
}
