package native

import (
	"context"
	"os"
	"testing"
)

// BenchmarkSample: the cost of picking one token from a vocabulary's
// logits, greedy and with the engine's default sampling chain (top-k 40,
// top-p 0.95, min-p 0.05, temperature 0.8), on MCPD_BENCH_MODEL (make
// bench-native: the 135M model, 32000 tokens) or the tiny model.
func BenchmarkSample(b *testing.B) {
	path := os.Getenv("MCPD_BENCH_MODEL")
	if path == "" {
		path = tinyModel(b)
	}
	m := load(b, path)
	c, err := m.NewContext(ContextParams{ContextSize: 64, BatchSize: 16, Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var batch Batch
	batch.Add(1, 0, 0, true)
	if err := c.Decode(context.Background(), &batch); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		p    SamplerParams
	}{
		{"greedy", SamplerParams{}},
		{"default", SamplerParams{Temperature: 0.8, TopK: 40, TopP: 0.95, MinP: 0.05, Seed: 1}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := NewSampler(tc.p)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			for b.Loop() {
				if _, err := s.Sample(c, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTokenPiece: turning one generated token into its bytes, as the
// engine does for every token on the caller's goroutine (one cgo call).
func BenchmarkTokenPiece(b *testing.B) {
	path := os.Getenv("MCPD_BENCH_MODEL")
	if path == "" {
		path = tinyModel(b)
	}
	m := load(b, path)
	n := 0
	for b.Loop() {
		if _, err := m.TokenPiece(Token(n%m.nVocab), false); err != nil {
			b.Fatal(err)
		}
		n++
	}
}

// BenchmarkDecodeOne: one llama_decode of a single token on a context of
// the engine's shape — the C side of a generated token, without sampling
// or Go around it. Compare with the engine's time per token
// (BenchmarkNativeGenerate) for what the binding adds.
func BenchmarkDecodeOne(b *testing.B) {
	path := os.Getenv("MCPD_BENCH_MODEL")
	if path == "" {
		path = tinyModel(b)
	}
	m := load(b, path)
	c, err := m.NewContext(ContextParams{ContextSize: 512, BatchSize: 64, Threads: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var batch Batch
	pos := 0
	for b.Loop() {
		if pos == 500 {
			if err := c.ClearSequence(0); err != nil {
				b.Fatal(err)
			}
			pos = 0
		}
		batch.Reset()
		batch.Add(300, pos, 0, true)
		if err := c.Decode(context.Background(), &batch); err != nil {
			b.Fatal(err)
		}
		pos++
	}
}
