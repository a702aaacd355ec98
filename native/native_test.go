package native

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/native/gguf"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// tinyModel writes the tiny test model (seed 1) once per test binary run
// into a temp dir and returns its path.
func tinyModel(t testing.TB) string {
	t.Helper()
	return writeModel(t, gguf.TinySpec(1))
}

func writeModel(t testing.TB, s gguf.Spec) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), s.Name+".gguf")
	var buf bytes.Buffer
	if err := gguf.WriteModel(&buf, s); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t testing.TB, path string) *Model {
	t.Helper()
	m, err := Load(context.Background(), path, ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// greedy decodes prompt on a fresh context and returns n greedy tokens.
func greedy(t testing.TB, m *Model, threads int, prompt string, n int) []Token {
	t.Helper()
	ctx := context.Background()
	c, err := m.NewContext(ContextParams{ContextSize: 256, BatchSize: 64, Threads: threads})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := NewSampler(SamplerParams{})
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
		b.Add(tok, i, 0, i == len(toks)-1)
	}
	out := make([]Token, 0, n)
	pos := len(toks)
	for range n {
		if err := c.Decode(ctx, &b); err != nil {
			t.Fatal(err)
		}
		tok, err := s.Sample(c, b.Len()-1)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tok)
		b.Reset()
		b.Add(tok, pos, 0, true)
		pos++
	}
	return out
}

// TestGreedyGolden: the tiny model's greedy tokens are the same on every
// run and at 1 and 2 threads, and match testdata/tiny-greedy.golden
// (regenerate with go test ./native -run Golden -update).
func TestGreedyGolden(t *testing.T) {
	m := load(t, tinyModel(t))
	prompts := []string{"Hello, world", "the quick brown fox", "ESP32 says: temperature is 21.5 C"}
	var got strings.Builder
	for _, p := range prompts {
		ref := greedy(t, m, 1, p, 32)
		for _, threads := range []int{1, 2} {
			for run := range 2 {
				if again := greedy(t, m, threads, p, 32); fmt.Sprint(again) != fmt.Sprint(ref) {
					t.Fatalf("%q threads %d run %d: %v, want %v", p, threads, run, again, ref)
				}
			}
		}
		fmt.Fprintf(&got, "%q %v\n", p, ref)
	}
	golden := filepath.Join("testdata", "tiny-greedy.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got.String() != string(want) {
		t.Fatalf("greedy tokens changed:\n%s\nwant:\n%s", got.String(), want)
	}
	// A model that repeats one token would make this test weak.
	if distinct := map[Token]bool{}; true {
		for _, tok := range greedy(t, m, 2, prompts[0], 32) {
			distinct[tok] = true
		}
		if len(distinct) < 3 {
			t.Fatalf("greedy output has only %d distinct tokens", len(distinct))
		}
	}
}

// The worker threads live from decode to decode (a ggml threadpool per
// context): changing their number replaces the pool, Idle puts it to sleep,
// and neither changes a token.
func TestWorkerThreads(t *testing.T) {
	m := load(t, tinyModel(t))
	const prompt, n = "Hello, world", 24
	want := greedy(t, m, 1, prompt, n)
	for _, poll := range []int{0, -1, 100} {
		c, err := m.NewContext(ContextParams{ContextSize: 256, BatchSize: 64, Threads: 2, ThreadsBatch: 1, Poll: poll})
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewSampler(SamplerParams{})
		if err != nil {
			t.Fatal(err)
		}
		toks, err := m.Tokenize(prompt, true, false)
		if err != nil {
			t.Fatal(err)
		}
		var b Batch
		for i, tok := range toks {
			b.Add(tok, i, 0, i == len(toks)-1)
		}
		var got []Token
		for i := range n {
			switch i {
			case 5:
				err = c.SetThreads(1, 1)
			case 10:
				err = c.Idle()
			case 15:
				err = c.SetThreads(3, 2)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Decode(context.Background(), &b); err != nil {
				t.Fatal(err)
			}
			tok, err := s.Sample(c, b.Len()-1)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, tok)
			b.Reset()
			b.Add(tok, len(toks)+i, 0, true)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("poll %d: %v, want %v", poll, got, want)
		}
		s.Close()
		c.Close()
	}
	if _, err := m.NewContext(ContextParams{Poll: 101}); !errors.Is(err, ErrInvalid) {
		t.Errorf("poll 101: %v", err)
	}
}

// HugePages reads the weights into memory that asked for huge pages: the
// buffer is found (llama.cpp gives no handle on it) and the model decodes
// the same tokens as when mapped. A model over 32 MiB, so that malloc maps
// its buffer on its own whatever its threshold.
func TestHugePages(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("transparent huge pages are Linux's")
	}
	s := gguf.TinySpec(1)
	s.Name, s.Dim, s.Vocab = "mcpd-wide", 256, 32000 // 2 × 32.8 MB of F32 embedding and output
	path := writeModel(t, s)
	mapped := load(t, path)
	huge, err := Load(context.Background(), path, ModelParams{HugePages: true})
	if err != nil {
		t.Fatal(err)
	}
	defer huge.Close()
	var tensors int64
	for _, ti := range huge.Info().Tensors {
		tensors += ti.Size
	}
	if got := huge.HugePageBytes(); got < tensors {
		t.Errorf("%d bytes asked for huge pages, the weights are %d", got, tensors)
	}
	if got := mapped.HugePageBytes(); got != 0 {
		t.Errorf("mapped model: %d bytes asked for huge pages", got)
	}
	want := greedy(t, mapped, 1, "Hello, world", 16)
	if got := greedy(t, huge, 1, "Hello, world", 16); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("huge pages: %v, mapped: %v", got, want)
	}
}

func TestLoadBadFiles(t *testing.T) {
	dir := t.TempDir()
	good, err := os.ReadFile(tinyModel(t))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"truncated.gguf":   good[:len(good)/2],
		"random.gguf":      bytes.Repeat([]byte{0x5a, 0x13, 0xe7}, 5000),
		"wrong-magic.gguf": append([]byte("GGML"), good[4:]...),
		"huge-count.gguf":  append(append([]byte("GGUF\x03\x00\x00\x00"), bytes.Repeat([]byte{0xff}, 16)...), good[24:]...),
		"empty.gguf":       nil,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name := range files {
		_, err := Load(context.Background(), filepath.Join(dir, name), ModelParams{})
		if !errors.Is(err, ErrModel) {
			t.Errorf("%s: %v, want ErrModel", name, err)
		}
	}
	if _, err := Load(context.Background(), filepath.Join(dir, "missing.gguf"), ModelParams{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if _, err := Load(context.Background(), dir, ModelParams{}); err == nil {
		t.Error("directory loaded")
	}
	// Valid GGUF, but not a model llama.cpp can build: C must refuse it
	// with an error, not abort.
	s := gguf.TinySpec(1)
	f, err := s.File()
	if err != nil {
		t.Fatal(err)
	}
	f.Tensors = f.Tensors[:len(f.Tensors)-1] // drop blk.1.ffn_down
	var buf bytes.Buffer
	if err := gguf.Write(&buf, f); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "missing-tensor.gguf")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(context.Background(), p, ModelParams{}); !errors.Is(err, ErrModel) {
		t.Errorf("missing tensor: %v", err)
	}
}

func TestTokenizeRoundTrip(t *testing.T) {
	m := load(t, tinyModel(t))
	sp, err := m.Special()
	if err != nil {
		t.Fatal(err)
	}
	if sp.BOS != gguf.TokenBOS || sp.EOS != gguf.TokenEOS || !sp.AddBOS {
		t.Fatalf("special %+v", sp)
	}
	for _, text := range []string{"Hello, world", "température 21°C ✓", "", "zzz 123"} {
		toks, err := m.Tokenize(text, true, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(toks) == 0 || toks[0] != sp.BOS {
			t.Fatalf("%q: %v lacks BOS", text, toks)
		}
		back, err := m.Detokenize(toks, true, false)
		if err != nil {
			t.Fatal(err)
		}
		// The tokenizer's leading-space marker comes back as a space.
		if strings.TrimPrefix(back, " ") != text {
			t.Errorf("round trip %q → %v → %q", text, toks, back)
		}
		var pieces []byte
		for _, tok := range toks[1:] {
			p, err := m.TokenPiece(tok, false)
			if err != nil {
				t.Fatal(err)
			}
			pieces = append(pieces, p...)
		}
		if got := strings.TrimPrefix(string(pieces), " "); got != text {
			t.Errorf("pieces of %q: %q", text, got)
		}
	}
	// Control tokens in device text stay text unless asked for.
	toks, _ := m.Tokenize("</s>", false, false)
	for _, tok := range toks {
		if tok == sp.EOS {
			t.Fatalf("plain text produced EOS: %v", toks)
		}
	}
	if _, err := m.TokenPiece(Token(m.VocabSize()), false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("out-of-range token: %v", err)
	}
}

func TestCloseAndUseAfterClose(t *testing.T) {
	m, err := Load(context.Background(), tinyModel(t), ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.NewContext(ContextParams{ContextSize: 64, BatchSize: 16, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := m.NewContext(ContextParams{ContextSize: 64, BatchSize: 16, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second context close: %v", err)
	}
	s, err := NewSampler(SamplerParams{Temperature: 0.8, TopK: 40, TopP: 0.9, MinP: 0.05, RepeatPenalty: 1.1, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second model close: %v", err)
	}
	var b Batch
	b.Add(1, 0, 0, true)
	checks := map[string]error{
		"decode":   c.Decode(context.Background(), &b),
		"clear":    c.ClearSequence(0),
		"clearAll": c.Clear(),
		"threads":  c.SetThreads(1, 1),
		"idle":     c.Idle(),
		"close":    c.Close(),
	}
	_, checks["tokenize"] = m.Tokenize("x", true, false)
	_, checks["piece"] = m.TokenPiece(5, false)
	_, checks["detok"] = m.Detokenize([]Token{5}, false, false)
	_, checks["context"] = m.NewContext(ContextParams{})
	_, checks["logits"] = c.Logits(0)
	_, checks["sample"] = s.Sample(c, 0)
	_, checks["special"] = m.Special()
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after close: %v", name, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second sampler close: %v", err)
	}
	if err := s.Accept(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}
}

func TestDecodeRejects(t *testing.T) {
	m := load(t, tinyModel(t))
	c, err := m.NewContext(ContextParams{ContextSize: 64, BatchSize: 8, Sequences: 2, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	bad := map[string]func(b *Batch){
		"empty":    func(b *Batch) {},
		"token":    func(b *Batch) { b.Add(Token(m.VocabSize()), 0, 0, true) },
		"negative": func(b *Batch) { b.Add(-1, 0, 0, true) },
		"sequence": func(b *Batch) { b.Add(5, 0, 2, true) },
		"position": func(b *Batch) { b.Add(5, c.SequenceSize(), 0, true) },
		"too many": func(b *Batch) {
			for i := range 9 {
				b.Add(5, i, 0, false)
			}
		},
	}
	for name, fill := range bad {
		var b Batch
		fill(&b)
		if err := c.Decode(ctx, &b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	var b Batch
	b.Add(1, 0, 0, false)
	b.Add(5, 1, 0, true)
	if err := c.Decode(ctx, &b); err != nil {
		t.Fatal(err)
	}
	s, _ := NewSampler(SamplerParams{})
	defer s.Close()
	for _, i := range []int{0, 2, -1} {
		if _, err := s.Sample(c, i); !errors.Is(err, ErrInvalid) {
			t.Errorf("sample index %d: %v", i, err)
		}
		if _, err := c.Logits(i); !errors.Is(err, ErrInvalid) {
			t.Errorf("logits index %d: %v", i, err)
		}
	}
	if l, err := c.Logits(1); err != nil || len(l) != m.VocabSize() {
		t.Fatalf("logits: %d, %v", len(l), err)
	}
	if err := c.ClearSequence(2); !errors.Is(err, ErrInvalid) {
		t.Errorf("clear bad sequence: %v", err)
	}
	// A position gap in a sequence is rejected by llama.cpp itself.
	b.Reset()
	b.Add(5, 10, 0, true)
	if err := c.Decode(ctx, &b); err == nil {
		t.Error("gap accepted")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	b.Reset()
	b.Add(5, 2, 0, true)
	if err := c.Decode(cancelled, &b); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled decode: %v", err)
	}
	for _, p := range []SamplerParams{{TopK: -1}, {MinP: 2}, {Temperature: float32(negInf())}} {
		if _, err := NewSampler(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("sampler %+v: %v", p, err)
		}
	}
}

func negInf() float64 { var z float64; return -1 / z }

// TestSamplerSeed: a seeded temperature sampler repeats itself.
func TestSamplerSeed(t *testing.T) {
	m := load(t, tinyModel(t))
	run := func(seed uint32) []Token {
		c, err := m.NewContext(ContextParams{ContextSize: 128, BatchSize: 32, Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := NewSampler(SamplerParams{Temperature: 1.5, TopK: 100, TopP: 0.95, MinP: 0.01, RepeatPenalty: 1.2, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var b Batch
		b.Add(1, 0, 0, true)
		var out []Token
		for pos := 1; pos <= 24; pos++ {
			if err := c.Decode(context.Background(), &b); err != nil {
				t.Fatal(err)
			}
			tok, err := s.Sample(c, 0)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, tok)
			b.Reset()
			b.Add(tok, pos, 0, true)
		}
		return out
	}
	a, b := run(7), run(7)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("same seed: %v vs %v", a, b)
	}
	if c := run(8); fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatalf("seeds 7 and 8 gave the same %v", a)
	}
}

func TestCheckCPU(t *testing.T) {
	x86 := map[string]bool{"AVX2": true, "FMA": true, "F16C": true, "BMI2": true}
	a76 := map[string]bool{"NEON": true, "DOTPROD": true, "FP16": true} // Cortex-A76 (Pi 5)
	a72 := map[string]bool{"NEON": true}                                // Cortex-A72 (Pi 4): armv8.0
	a7 := map[string]bool{"NEON": true, "VFPv4": true}                  // Cortex-A7 (Pi 2)
	a8 := map[string]bool{"NEON": true}                                 // Cortex-A8: VFPv3 only
	tests := []struct {
		name    string
		arch    string
		built   uint
		have    map[string]bool
		missing string // "" = accepted
	}{
		{"x86-64-v3 on a v3 CPU", "amd64", builtX86V3, x86, ""},
		{"x86-64-v3 on an old CPU", "amd64", builtX86V3, map[string]bool{"AVX2": true}, "FMA, F16C, BMI2"},
		{"amd64 baseline anywhere", "amd64", 0, nil, ""},
		{"arm64 baseline on Pi 4", "arm64", builtNEON, a72, ""},
		{"arm64 dotprod on Pi 5", "arm64", builtNEON | builtDotProd | builtFP16, a76, ""},
		{"arm64 dotprod on Pi 4", "arm64", builtNEON | builtDotProd | builtFP16, a72, "DOTPROD, FP16"},
		{"arm64 i8mm on Pi 5", "arm64", builtNEON | builtDotProd | builtI8MM, a76, "I8MM"},
		{"arm64 sve on Pi 5", "arm64", builtNEON | builtSVE, a76, "SVE"},
		{"armv7 NEON-VFPv4 on Pi 2", "arm", builtNEON | builtVFPv4, a7, ""},
		{"armv7 NEON-VFPv4 on Cortex-A8", "arm", builtNEON | builtVFPv4, a8, "VFPv4"},
		{"armv7 NEON on a CPU without NEON", "arm", builtNEON | builtVFPv4, map[string]bool{}, "NEON, VFPv4"},
		{"armv7 generic anywhere", "arm", 0, map[string]bool{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkCPU(tt.arch, tt.built, tt.have)
			if tt.missing == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrCPU) || !strings.Contains(err.Error(), "lacks "+tt.missing+";") {
				t.Fatalf("got %v, want ErrCPU naming %q", err, tt.missing)
			}
			if !strings.Contains(err.Error(), "docs/") {
				t.Fatalf("no advice in %v", err)
			}
		})
	}
	// The binary under test runs where it was built: it must accept this CPU.
	if err := CheckCPU(); err != nil {
		t.Fatalf("this machine: %v", err)
	}
	t.Log(BuildInfo())
}

// TestBuildInfo: the label names what the C side was compiled for, which
// follows CGO_CFLAGS (x86-64-v3 under make on amd64, NEON on arm64).
func TestBuildInfo(t *testing.T) {
	if got := builtLabel(builtNEON | builtDotProd | builtFP16); got != "NEON+dotprod+fp16" {
		t.Fatalf("label %q", got)
	}
	if got := builtLabel(0); got != "baseline" {
		t.Fatalf("label %q", got)
	}
	info := BuildInfo()
	if !strings.HasPrefix(info, runtime.GOARCH+" ") {
		t.Fatalf("BuildInfo %q lacks the arch", info)
	}
	if runtime.GOARCH == "arm64" && !strings.Contains(info, "NEON") {
		t.Fatalf("arm64 build without NEON: %q", info)
	}
}

// logCapture collects slog records.
type logCapture struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.Level == slog.LevelDebug {
		l.msgs = append(l.msgs, r.Message)
	}
	return nil
}
func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler      { return l }

// TestLogRouted: llama.cpp's load messages arrive in slog at debug level.
func TestLogRouted(t *testing.T) {
	capture := &logCapture{}
	old := slog.Default()
	slog.SetDefault(slog.New(capture))
	defer slog.SetDefault(old)
	m, err := Load(context.Background(), tinyModel(t), ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	capture.mu.Lock()
	defer capture.mu.Unlock()
	if len(capture.msgs) == 0 {
		t.Fatal("no llama.cpp log lines reached slog")
	}
	t.Logf("%d lines, first %q", len(capture.msgs), capture.msgs[0])
}

// TestDecodeAbort: cancelling ctx stops a long prompt decode part-way (the
// abort flag ggml polls), and Close does the same for a decode running on
// another goroutine.
func TestDecodeAbort(t *testing.T) {
	s := gguf.TinySpec(2)
	s.Name, s.Layers, s.Dim, s.Heads, s.KVHeads, s.FF, s.Context = "mid", 4, 256, 4, 4, 1024, 1024
	m := load(t, writeModel(t, s))
	newCtx := func() *Context {
		c, err := m.NewContext(ContextParams{ContextSize: 1024, BatchSize: 1024, Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	var b Batch
	for i := range 1000 {
		b.Add(Token(3+i%300), i, 0, i == 999)
	}
	c := newCtx()
	defer c.Close()
	start := time.Now()
	if err := c.Decode(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	t.Logf("full decode of 1000 tokens: %v", full)
	if full < 40*time.Millisecond {
		t.Skipf("decode too fast (%v) to cancel part-way", full)
	}
	if err := c.ClearSequence(0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), full/10)
	defer cancel()
	start = time.Now()
	err := c.Decode(ctx, &b)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled decode: %v", err)
	}
	if d := time.Since(start); d > full/2 {
		t.Fatalf("cancelled decode took %v of a %v decode", d, full)
	}
	// The context still works after an abort (once the sequence is cleared).
	if err := c.ClearSequence(0); err != nil {
		t.Fatal(err)
	}
	var one Batch
	one.Add(1, 0, 0, true)
	if err := c.Decode(context.Background(), &one); err != nil {
		t.Fatalf("decode after abort: %v", err)
	}
	// Close from another goroutine aborts a running decode.
	c2 := newCtx()
	done := make(chan error, 1)
	go func() { done <- c2.Decode(context.Background(), &b) }()
	time.Sleep(full / 10)
	start = time.Now()
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > full/2 {
		t.Fatalf("Close waited %v for a %v decode", d, full)
	}
	if err := <-done; err == nil {
		t.Log("decode finished before Close (slow scheduling); no abort observed")
	}
}

// A prefix kept in a sequence (TrimSequence) or copied from another
// (CopySequence) continues exactly as if the whole prompt had been
// evaluated there: the same greedy tokens. Sequence 1 first holds other
// tokens, which the copy must replace.
func TestSequenceReuse(t *testing.T) {
	m := load(t, tinyModel(t))
	const prompt, n = "Hello, world, and the quick brown fox", 12
	want := greedy(t, m, 1, prompt, n)
	toks, err := m.Tokenize(prompt, true, false)
	if err != nil {
		t.Fatal(err)
	}
	other, err := m.Tokenize("zzz sensor 7", true, false)
	if err != nil {
		t.Fatal(err)
	}
	cut := len(toks) / 2
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, c *Context) int // the sequence to continue on
	}{
		{"trim", func(t *testing.T, c *Context) int {
			if ok, err := c.TrimSequence(0, cut); err != nil || !ok {
				t.Fatalf("TrimSequence: %v %v", ok, err)
			}
			return 0
		}},
		{"copy", func(t *testing.T, c *Context) int {
			if err := c.CopySequence(0, 1); err != nil {
				t.Fatal(err)
			}
			if ok, err := c.TrimSequence(1, cut); err != nil || !ok {
				t.Fatalf("TrimSequence: %v %v", ok, err)
			}
			// The source is not touched: cut it differently.
			if ok, err := c.TrimSequence(0, 1); err != nil || !ok {
				t.Fatalf("TrimSequence: %v %v", ok, err)
			}
			return 1
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c, err := m.NewContext(ContextParams{ContextSize: 512, BatchSize: 64, Sequences: 2, Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := NewSampler(SamplerParams{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var b Batch
			for i, tok := range toks {
				b.Add(tok, i, 0, false)
			}
			for i, tok := range other {
				b.Add(tok, i, 1, false)
			}
			if err := c.Decode(ctx, &b); err != nil {
				t.Fatal(err)
			}
			seq := tc.prepare(t, c)
			b.Reset()
			for i := cut; i < len(toks); i++ {
				b.Add(toks[i], i, seq, i == len(toks)-1)
			}
			var got []Token
			for pos := len(toks); len(got) < n; pos++ {
				if err := c.Decode(ctx, &b); err != nil {
					t.Fatal(err)
				}
				tok, err := s.Sample(c, b.Len()-1)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, tok)
				b.Reset()
				b.Add(tok, pos, seq, true)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("after %s: %v, whole prompt: %v", tc.name, got, want)
			}
		})
	}
	c, err := m.NewContext(ContextParams{ContextSize: 64, BatchSize: 16, Sequences: 2, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, bad := range [][2]int{{-1, 0}, {2, 0}, {0, 2}} {
		if err := c.CopySequence(bad[0], bad[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("CopySequence(%d, %d): %v", bad[0], bad[1], err)
		}
	}
	if _, err := c.TrimSequence(2, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("TrimSequence(2, 0): %v", err)
	}
}

// Greedy sampling without penalty or grammar takes the argmax shortcut:
// the same token as llama.cpp's greedy sampler and as the first largest
// logit, at every step of a generation.
func TestArgmaxIsGreedy(t *testing.T) {
	m := load(t, tinyModel(t))
	c, err := m.NewContext(ContextParams{ContextSize: 256, BatchSize: 64, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fast, err := NewSampler(SamplerParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	chain, err := NewSampler(SamplerParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer chain.Close()
	if !fast.argmax {
		t.Fatal("a greedy sampler without penalty does not take the shortcut")
	}
	chain.argmax = false // llama.cpp's greedy sampler
	for _, p := range []SamplerParams{{RepeatPenalty: 1.1}, {Temperature: 0.5}} {
		s, err := NewSampler(p)
		if err != nil {
			t.Fatal(err)
		}
		if s.argmax {
			t.Errorf("%+v takes the argmax shortcut", p)
		}
		s.Close()
	}
	toks, err := m.Tokenize("sensor 7 humidity 40%", true, false)
	if err != nil {
		t.Fatal(err)
	}
	var b Batch
	for i, tok := range toks {
		b.Add(tok, i, 0, i == len(toks)-1)
	}
	for pos := len(toks); pos < len(toks)+24; pos++ {
		if err := c.Decode(context.Background(), &b); err != nil {
			t.Fatal(err)
		}
		i := b.Len() - 1
		got, err := fast.Sample(c, i)
		if err != nil {
			t.Fatal(err)
		}
		want, err := chain.Sample(c, i)
		if err != nil {
			t.Fatal(err)
		}
		logits, err := c.Logits(i)
		if err != nil {
			t.Fatal(err)
		}
		best := 0
		for j, l := range logits {
			if l > logits[best] {
				best = j
			}
		}
		if got != want || int(got) != best {
			t.Fatalf("position %d: argmax %d, llama.cpp's greedy %d, largest logit at %d", pos, got, want, best)
		}
		b.Reset()
		b.Add(got, pos, 0, true)
	}
}
