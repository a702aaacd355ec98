package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/mcpd-project/mcpd/native"
	"github.com/mcpd-project/mcpd/native/gguf"
)

func tinyModel(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	if err := gguf.WriteModel(&buf, gguf.TinySpec(1)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// bindingGreedy generates n tokens with package native, the engine's path.
func bindingGreedy(t *testing.T, path string, prompt []int32, n int) []int32 {
	t.Helper()
	ctx := context.Background()
	m, err := native.Load(ctx, path, native.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c, err := m.NewContext(native.ContextParams{ContextSize: 256, BatchSize: 64, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, err := native.NewSampler(native.SamplerParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var b native.Batch
	for i, tok := range prompt {
		b.Add(native.Token(tok), i, 0, i == len(prompt)-1)
	}
	var out []int32
	for pos := len(prompt); len(out) < n; pos++ {
		if err := c.Decode(ctx, &b); err != nil {
			t.Fatal(err)
		}
		tok, err := s.Sample(c, b.Len()-1)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, int32(tok))
		if eog, _ := m.IsEOG(tok); eog {
			break
		}
		b.Reset()
		b.Add(tok, pos, 0, true)
	}
	return out
}

// The harness is a reference only if it does the engine's work: the same
// greedy tokens as the binding, from Run and from Begin/Step, with and
// without a threadpool.
func TestHarnessMatchesBinding(t *testing.T) {
	path := tinyModel(t)
	prompt := []int32{gguf.TokenBOS, 300, 301, 302}
	const n = 24
	want := bindingGreedy(t, path, prompt, n)
	for _, p := range []Params{{Threads: 1}, {Threads: 2, NoThreadpool: true}, {Threads: 2, Poll: -1, NoMmap: true},
		{Threads: 2, HugePages: true, NoFlashAttn: true}} {
		h, err := Open(path, p)
		if err != nil {
			t.Fatal(err)
		}
		got, res, err := h.Run(prompt, n)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%+v: harness %v, binding %v", p, got, want)
		}
		if res.Tokens != len(got) || res.TTFT <= 0 || res.Total < res.TTFT || res.Decode <= 0 || res.GenPerSec() <= 0 {
			t.Errorf("%+v: result %+v", p, res)
		}
		// In steps: as many tokens as Run gave after the first.
		if err := h.Begin(prompt); err != nil {
			t.Fatal(err)
		}
		stepped := 0
		for {
			k, d, err := h.Step(5)
			if err != nil {
				t.Fatal(err)
			}
			if k == 0 || stepped+k >= n-1 {
				stepped += k
				break
			}
			if d <= 0 {
				t.Errorf("step of %d tokens took %v", k, d)
			}
			stepped += k
		}
		if stepped < min(n-1, len(want)-1) {
			t.Errorf("%+v: stepped %d tokens, want at least %d", p, stepped, min(n-1, len(want)-1))
		}
		h.Close()
		h.Close()
		if _, _, err := h.Run(prompt, 1); err == nil {
			t.Error("Run after Close succeeded")
		}
		if _, _, err := h.Step(1); err == nil {
			t.Error("Step after Close succeeded")
		}
	}
}

// Sequences decoded as one batch per step each follow the one-sequence
// greedy answer (the tiny model's batched and single outputs are the
// same, as the engine's tests assert), and Step counts every sequence's
// tokens.
func TestHarnessSequences(t *testing.T) {
	path := tinyModel(t)
	prompt := []int32{gguf.TokenBOS, 300, 301, 302}
	const n = 12
	want := bindingGreedy(t, path, prompt, n)
	for _, seqs := range []int{1, 3, 8} {
		h, err := Open(path, Params{Threads: 1, Sequences: seqs})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Begin(prompt); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(want); i++ {
			next := h.Next()
			if len(next) != seqs {
				t.Fatalf("%d sequences: Next gave %d tokens", seqs, len(next))
			}
			for s, tok := range next {
				if tok != want[i] {
					t.Fatalf("%d sequences: sequence %d's token %d is %d, want %d", seqs, s, i, tok, want[i])
				}
			}
			if i == len(want)-1 {
				break
			}
			k, _, err := h.Step(1)
			if err != nil {
				t.Fatal(err)
			}
			if k != seqs {
				t.Fatalf("%d sequences: a step counted %d tokens", seqs, k)
			}
		}
		h.Close()
		if h.Next() != nil {
			t.Error("Next after Close")
		}
	}
}

// On a model loaded by package native — the engine's way of comparing on
// the very same weights — the harness gives the binding's tokens too.
func TestOpenModel(t *testing.T) {
	path := tinyModel(t)
	prompt := []int32{gguf.TokenBOS, 300, 301, 302}
	want := bindingGreedy(t, path, prompt, 16)
	m, err := native.Load(context.Background(), path, native.ModelParams{HugePages: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	h, err := OpenModel(m.LlamaModel(), Params{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := h.Run(prompt, 16)
	h.Close() // before the model, which it borrowed
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("harness on the binding's model: %v, binding %v", got, want)
	}
	if _, err := OpenModel(nil, Params{}); err == nil {
		t.Error("OpenModel(nil) succeeded")
	}
}

// A file llama.cpp would abort on never reaches it.
func TestOpenValidates(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.gguf")
	if err := os.WriteFile(p, []byte("GGUF\x03\x00\x00\x00garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, Params{}); !errors.Is(err, gguf.ErrTruncated) && !errors.Is(err, gguf.ErrCorrupt) {
		t.Fatalf("Open of a truncated file: %v", err)
	}
}

func TestMemory(t *testing.T) {
	if _, err := NewMemory(1024, false); err == nil {
		t.Error("a 1 KiB buffer was accepted")
	}
	for _, huge := range []bool{false, true} {
		m, err := NewMemory(8<<20, huge)
		if err != nil {
			t.Fatal(err)
		}
		for _, threads := range []int{1, 2} {
			rd, err := m.ReadBandwidth(threads, 2)
			if err != nil || rd < 1e8 {
				t.Errorf("read with %d threads: %.3g B/s, %v", threads, rd, err)
			}
			q, err := m.Q8_0Rate(threads, 2)
			if err != nil || q < 1e8 {
				t.Errorf("Q8_0 dot with %d threads: %.3g B/s, %v", threads, q, err)
			}
		}
		if _, err := m.ReadBandwidth(0, 1); err == nil {
			t.Error("0 threads accepted")
		}
		m.Free()
		m.Free()
		if _, err := m.ReadBandwidth(1, 1); err == nil {
			t.Error("read after Free succeeded")
		}
	}
}

func TestWeightBytesPerToken(t *testing.T) {
	embd := gguf.TensorInfo{Name: "token_embd.weight", Dims: []int64{8, 10}, Size: 800}
	blk := gguf.TensorInfo{Name: "blk.0.attn_q.weight", Dims: []int64{8, 8}, Size: 64}
	out := gguf.TensorInfo{Name: "output.weight", Dims: []int64{8, 10}, Size: 800}
	// Untied: one embedding row (80 bytes), the layer and the output.
	if got := WeightBytesPerToken(&gguf.Info{Tensors: []gguf.TensorInfo{embd, blk, out}}); got != 80+64+800 {
		t.Errorf("untied: %d bytes", got)
	}
	// Tied: the embedding matrix is the output matrix, read whole.
	if got := WeightBytesPerToken(&gguf.Info{Tensors: []gguf.TensorInfo{embd, blk}}); got != 800+64 {
		t.Errorf("tied: %d bytes", got)
	}
}

// benchModel is MCPD_BENCH_MODEL (make bench-native: the 135M Q8_0 model),
// else the tiny one.
func benchModel(b *testing.B) string {
	if p := os.Getenv("MCPD_BENCH_MODEL"); p != "" {
		return p
	}
	var buf bytes.Buffer
	if err := gguf.WriteModel(&buf, gguf.TinySpec(1)); err != nil {
		b.Fatal(err)
	}
	p := filepath.Join(b.TempDir(), "tiny.gguf")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkSettings: what llama.cpp's own choices and ours are worth on
// this machine, each against the harness's default (llama.cpp's: a
// persistent threadpool polling at level 50, the model file mapped, flash
// attention on), alternating every 8 tokens of the same generation. Metrics are each setting's speed ÷ the default's (median
// over rounds): below 1 the setting is slower.
func BenchmarkSettings(b *testing.B) {
	path := benchModel(b)
	threads, _ := strconv.Atoi(os.Getenv("MCPD_BENCH_THREADS"))
	if threads == 0 {
		threads = 2
	}
	settings := []struct {
		name string
		p    Params
	}{
		{"default", Params{}},
		{"no-threadpool", Params{NoThreadpool: true}},
		{"poll-0", Params{Poll: -1}},
		{"no-mmap", Params{NoMmap: true}},
		{"huge-pages", Params{HugePages: true}},
		{"no-flash-attn", Params{NoFlashAttn: true}},
	}
	// The mapped settings read the file as after a reboot, not as
	// whatever filled the page cache last (see DropCache).
	if err := DropCache(path); err != nil {
		b.Fatal(err)
	}
	hs := make([]*Harness, len(settings))
	for i, s := range settings {
		s.p.Threads = threads
		h, err := Open(path, s.p)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		hs[i] = h
	}
	prompt := []int32{gguf.TokenBOS, 300, 301, 302}
	rel := make([][]float64, len(hs))
	for b.Loop() {
		d, err := Interleave(hs, prompt, 128, 8)
		if err != nil {
			b.Fatal(err)
		}
		for i := range hs {
			rel[i] = append(rel[i], d[0].Seconds()/d[i].Seconds())
		}
	}
	for i, s := range settings[1:] {
		v := slices.Clone(rel[i+1])
		slices.Sort(v)
		b.ReportMetric(v[len(v)/2], s.name+"/default")
	}
}

// BenchmarkMemory: the physical limits of decoding — the machine's read
// bandwidth and ggml's Q8_0 dot product streaming over the same 512 MiB
// (bound by memory) and over 256 KiB that stay in cache (bound by
// arithmetic), with huge pages and with 4 KiB ones.
func BenchmarkMemory(b *testing.B) {
	for _, size := range []int64{512 << 20, 256 << 10} {
		for _, huge := range []bool{true, false} {
			if size < 2<<20 && !huge {
				continue // a cache-sized buffer needs few pages either way
			}
			for _, threads := range []int{1, 2} {
				b.Run(fmt.Sprintf("%dKiB/huge=%v/threads=%d", size>>10, huge, threads), func(b *testing.B) {
					m, err := NewMemory(size, huge)
					if err != nil {
						b.Fatal(err)
					}
					defer m.Free()
					var rd, q float64
					for b.Loop() {
						r, err := m.ReadBandwidth(threads, 3)
						if err != nil {
							b.Fatal(err)
						}
						d, err := m.Q8_0Rate(threads, 3)
						if err != nil {
							b.Fatal(err)
						}
						rd, q = max(rd, r), max(q, d)
					}
					b.ReportMetric(rd/1e9, "read-GB/s")
					b.ReportMetric(q/1e9, "q8_0-GB/s")
				})
			}
		}
	}
}

func TestDropCache(t *testing.T) {
	path := tinyModel(t)
	if err := DropCache(path); err != nil {
		t.Fatal(err)
	}
	if err := DropCache(filepath.Join(t.TempDir(), "missing.gguf")); err == nil {
		t.Fatal("a missing file was dropped")
	}
}
