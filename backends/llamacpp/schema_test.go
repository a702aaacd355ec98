package llamacpp

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/grammar"
	"github.com/mcpd-project/mcpd/native/gguf"
)

// schemaCases are the schemas the seeded runs hold the engine to: the
// protocol's example, then arrays, numbers, anyOf and nesting.
var schemaCases = []string{
	`{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3},"valve":{"enum":["open","closed"]},"note":{"type":"string","maxLength":8}},"required":["fan","valve"]}`,
	`{"type":"array","items":{"type":"number"},"minItems":1,"maxItems":4}`,
	`{"type":"object","properties":{"ok":{"type":"boolean"},"why":{"anyOf":[{"type":"null"},{"type":"string","minLength":1,"maxLength":12}]}}}`,
	`{"type":"object","properties":{"relay":{"type":"object","properties":{"id":{"type":"integer","minimum":0},"on":{"type":"boolean"}}},"tags":{"type":"array","items":{"enum":["a","b","ü"]},"maxItems":3}}}`,
}

// schemaSeeds is how many seeded requests TestLlamaSchemaAnswers makes
// (MCPD_SCHEMA_SEEDS overrides: the 1,000-seed run).
func schemaSeeds(t *testing.T) int {
	n := 200
	if v := os.Getenv("MCPD_SCHEMA_SEEDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			t.Fatalf("MCPD_SCHEMA_SEEDS=%q", v)
		}
	}
	return n
}

// TestLlamaSchemaAnswers: the random-weight tiny models emit garbage
// unconstrained, and under a schema's grammar emit valid, minified JSON of
// the schema that ends by itself (StopEOS within MaxBytes+1 tokens), for
// every seed — sampled at a high temperature, the hardest case.
func TestLlamaSchemaAnswers(t *testing.T) {
	seeds := schemaSeeds(t)
	schemas := make([]*grammar.Schema, len(schemaCases))
	for i, c := range schemaCases {
		var err error
		if schemas[i], err = grammar.Parse([]byte(c)); err != nil {
			t.Fatal(err)
		}
	}
	engines := []*Engine{
		newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{}),
		newEngine(t, writeModel(t, gguf.TinySpec(2)), Config{}),
	}
	request := func(i int, constrained bool) backends.Request {
		s := schemas[i%len(schemas)]
		req := backends.Request{
			Messages: []backends.Message{{Role: backends.RoleUser, Content: prompts[i%len(prompts)]}},
			Options: backends.Options{TemperatureSet: true, Temperature: 1.2, TopK: 64, RepeatPenalty: 1.1,
				Seed: uint32(i), SeedSet: true, MaxTokens: s.MaxBytes() + 1},
		}
		if constrained {
			req.Options.Grammar, req.Options.Schema = s.GBNF(), s.JSON()
		}
		return req
	}

	// Control: without the grammar the same requests are not valid
	// answers, so the constrained run below proves something.
	for i := range 8 {
		out, _, err := collect(t, engines[i%2], context.Background(), request(i, false))
		if err != nil {
			t.Fatal(err)
		}
		if schemas[i%len(schemas)].Validate([]byte(out)) == nil {
			t.Fatalf("unconstrained seed %d is already valid: %q", i, out)
		}
	}

	var (
		mu      sync.Mutex
		valid   int
		tokens  int
		work    = make(chan int)
		wg      sync.WaitGroup
		workers = 8 // the engine decodes them as one batch
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				s := schemas[i%len(schemas)]
				out, res, err := collect(t, engines[i%2], context.Background(), request(i, true))
				switch {
				case err != nil:
					t.Errorf("seed %d: %v", i, err)
				case res.Stop != backends.StopEOS:
					t.Errorf("seed %d: stop %v after %d tokens: %q", i, res.Stop, res.Tokens, out)
				default:
					if err := s.Validate([]byte(out)); err != nil {
						t.Errorf("seed %d: %v: %q", i, err, out)
						continue
					}
					mu.Lock()
					valid++
					tokens += res.Tokens
					mu.Unlock()
				}
			}
		}()
	}
	for i := range seeds {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("%d of %d seeded answers valid JSON of their schema (%d schemas, 2 random models, %.1f tokens each)",
		valid, seeds, len(schemas), float64(tokens)/float64(max(valid, 1)))
}

// BenchmarkSchemaDecode: decode speed under a schema's grammar against
// free decoding on the same engine, alternating every iteration so that
// both see the same machine (a shared box drifts): the grammar sampler
// looks at every vocabulary entry each step, so its cost grows with the
// vocabulary — run it on the 135M shape via MCPD_BENCH_MODEL, as make
// bench-native does. schema÷free is the ratio of decode speeds.
func BenchmarkSchemaDecode(b *testing.B) {
	s, err := grammar.Parse([]byte(`{"type":"array","items":{"type":"string","maxLength":32},"minItems":4,"maxItems":4}`))
	if err != nil {
		b.Fatal(err)
	}
	e := benchEngine(b, 1)
	free := greedyReq("Hello", s.MaxBytes()+1)
	constrained := free
	constrained.Options.Grammar = s.GBNF()
	var toks [2]int
	var decode [2]time.Duration
	for b.Loop() {
		for i, req := range []backends.Request{free, constrained} {
			res, err := e.Generate(context.Background(), req, discard)
			if err != nil {
				b.Fatal(err)
			}
			toks[i] += res.Tokens - 1
			decode[i] += res.Duration - res.TTFT
		}
	}
	freeRate, schemaRate := float64(toks[0])/decode[0].Seconds(), float64(toks[1])/decode[1].Seconds()
	b.ReportMetric(freeRate, "free-tok/s")
	b.ReportMetric(schemaRate, "schema-tok/s")
	b.ReportMetric(schemaRate/freeRate, "schema÷free")
}

// TestLlamaToolGrammar: under the tool grammar of docs/protocol.md §16 the
// random-weight model either calls a declared tool with valid arguments
// or answers in text — never a malformed call — for every seed; with
// mustCall it calls, every time.
func TestLlamaToolGrammar(t *testing.T) {
	parse := func(s string) *grammar.Schema {
		sc, err := grammar.Parse([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return sc
	}
	tools := []grammar.Tool{
		{Name: "soil", Args: parse(`{"type":"object","properties":{"bed":{"type":"integer","minimum":0,"maximum":3}}}`)},
		{Name: "relay", Args: parse(`{"type":"object","properties":{"on":{"type":"boolean"}}}`)},
		{Name: "time"},
	}
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{})
	for _, mustCall := range []bool{false, true} {
		g, err := grammar.ToolGrammar(tools, mustCall)
		if err != nil {
			t.Fatal(err)
		}
		calls, texts, used := 0, 0, map[int]bool{}
		for seed := range uint32(60) {
			req := backends.Request{
				Messages: []backends.Message{{Role: backends.RoleUser, Content: prompts[int(seed)%len(prompts)]}},
				Options: backends.Options{TemperatureSet: true, Temperature: 1.5, Seed: seed, SeedSet: true,
					MaxTokens: 48, Grammar: g},
			}
			out, res, err := collect(t, e, context.Background(), req)
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			tool, _, perr := grammar.ParseCall(tools, []byte(out))
			switch {
			case perr == nil && res.Stop == backends.StopEOS:
				calls++
				used[tool] = true
			case !mustCall && errors.Is(perr, grammar.ErrNoCall) && !strings.HasPrefix(out, "<"):
				texts++
			default:
				t.Errorf("mustCall %v, seed %d: %q (stop %v): %v", mustCall, seed, out, res.Stop, perr)
			}
		}
		t.Logf("mustCall %v, 60 seeds: %d calls (%d tools), %d text answers", mustCall, calls, len(used), texts)
		if mustCall && (calls != 60 || len(used) != len(tools)) {
			t.Fatalf("mustCall: %d calls of %d tools, want 60 of all %d", calls, len(used), len(tools))
		}
	}
}
