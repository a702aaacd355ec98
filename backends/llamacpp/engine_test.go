package llamacpp

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native/gguf"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

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

// newEngine starts an engine on path. Tests use one thread unless they
// compare thread counts: ggml's worker threads spin while waiting, and
// packages' tests run in parallel on a 2-core CI machine, where
// oversubscribed spinning threads slow everything down many times over.
func newEngine(t testing.TB, path string, cfg Config) *Engine {
	t.Helper()
	if cfg.Threads == 0 {
		cfg.Threads = 1
	}
	cfg.ModelPath = path
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SequenceContext == 0 {
		cfg.SequenceContext = 256
	}
	e, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func greedyReq(prompt string, maxTokens int) backends.Request {
	return backends.Request{Messages: []backends.Message{{Role: backends.RoleUser, Content: prompt}},
		Options: backends.Options{TemperatureSet: true, MaxTokens: maxTokens}}
}

// collect runs a request and returns the emitted text, checking that every
// piece is valid UTF-8.
func collect(t testing.TB, e *Engine, ctx context.Context, req backends.Request) (string, backends.Result, error) {
	t.Helper()
	var out strings.Builder
	res, err := e.Generate(ctx, req, func(p []byte) error {
		if !utf8.Valid(p) {
			t.Errorf("piece %q is not valid UTF-8", p)
		}
		out.Write(p)
		return nil
	})
	return out.String(), res, err
}

var prompts = []string{
	"Hello, world", "the quick brown fox", "ESP32 says: temperature is 21.5 C", "zzz",
	"sensor 7 humidity 40%", "What time is it?", "ünïcödé ✓ test", "a b c d e f g",
}

// TestLlamaGreedyGolden: greedy text from the tiny model is the same across
// runs and thread counts and matches testdata/llama-greedy.golden
// (go test ./backends -run GreedyGolden -update rewrites it).
func TestLlamaGreedyGolden(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	var got strings.Builder
	var ref []string
	for _, threads := range []int{1, 2} {
		e := newEngine(t, path, Config{Threads: threads, Parallel: 1})
		for run := range 2 {
			for i, p := range prompts[:4] {
				text, res, err := collect(t, e, context.Background(), greedyReq(p, 24))
				if err != nil {
					t.Fatal(err)
				}
				if res.Tokens != 24 || res.Stop != backends.StopLength || res.PromptTokens == 0 || res.TTFT <= 0 || res.Duration < res.TTFT {
					t.Fatalf("result %+v", res)
				}
				if ref == nil || len(ref) <= i {
					ref = append(ref, text)
					fmt.Fprintf(&got, "%q %q\n", p, text)
				} else if text != ref[i] {
					t.Fatalf("threads %d run %d %q: %q, want %q", threads, run, p, text, ref[i])
				}
			}
		}
		e.Close()
	}
	golden := filepath.Join("testdata", "llama-greedy.golden")
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
		t.Fatalf("greedy output changed:\n%s\nwant:\n%s", got.String(), want)
	}
}

// TestLlamaBatchedMatchesAlone: 8 concurrent greedy requests, decoded as 8
// sequences of one context, give the same text as each request alone.
func TestLlamaBatchedMatchesAlone(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	alone := newEngine(t, path, Config{Threads: 1, Parallel: 1})
	want := make([]string, len(prompts))
	for i, p := range prompts {
		text, _, err := collect(t, alone, context.Background(), greedyReq(p, 32))
		if err != nil {
			t.Fatal(err)
		}
		want[i] = text
	}
	alone.Close()
	batched := newEngine(t, path, Config{Threads: 1, Parallel: 8, PromptChunk: 4})
	defer func() {
		// The point of the test: sequences really shared decode steps.
		st := batched.Stats()
		t.Logf("%d steps, %.2f sequences sampled per step", st.Steps, float64(st.Outputs)/float64(st.Steps))
		if float64(st.Outputs)/float64(st.Steps) < 2 {
			t.Errorf("requests were not batched: %+v", st)
		}
	}()
	for round := range 3 {
		got := make([]string, len(prompts))
		errs := make([]error, len(prompts))
		var wg sync.WaitGroup
		for i, p := range prompts {
			wg.Go(func() {
				got[i], _, errs[i] = collect(t, batched, context.Background(), greedyReq(p, 32))
			})
		}
		wg.Wait()
		for i := range prompts {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if got[i] != want[i] {
				t.Errorf("round %d %q batched: %q, alone: %q", round, prompts[i], got[i], want[i])
			}
		}
	}
}

func TestLlamaCancelMidGeneration(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{Threads: 1, Parallel: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pieces := 0
	start := time.Now()
	var cancelledAt time.Time
	_, err := e.Generate(ctx, greedyReq("Hello, world", 10000), func(p []byte) error {
		pieces++
		if pieces == 3 {
			cancel()
			cancelledAt = time.Now()
		}
		if pieces > 3 && time.Since(cancelledAt) > time.Second {
			t.Error("still emitting a second after cancel")
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(cancelledAt); d > time.Second {
		t.Fatalf("returned %v after cancel", d)
	}
	t.Logf("cancelled after %d pieces, total %v", pieces, time.Since(start))
	// The sequence is freed: the engine still answers, identically.
	a, _, err := collect(t, e, context.Background(), greedyReq("zzz", 8))
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := collect(t, e, context.Background(), greedyReq("zzz", 8))
	if a != b || a == "" {
		t.Fatalf("after cancel: %q vs %q", a, b)
	}
	// A context that is already done never reaches the engine.
	if _, err := e.Generate(ctx, greedyReq("x", 4), func([]byte) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("done ctx: %v", err)
	}
}

func TestLlamaEmitErrorAndLimits(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{Threads: 1, Parallel: 2, SequenceContext: 64})
	boom := errors.New("uart gone")
	n := 0
	_, err := e.Generate(context.Background(), greedyReq("Hello, world", 100), func([]byte) error {
		n++
		if n == 2 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("emit error: %v", err)
	}
	_, res, err := collect(t, e, context.Background(), greedyReq("Hello, world", 5))
	if err != nil || res.Tokens != 5 || res.Stop != backends.StopLength {
		t.Fatalf("max tokens: %+v %v", res, err)
	}
	// The context bounds generation: 64 positions per sequence.
	_, res, err = collect(t, e, context.Background(), greedyReq("Hello, world", 1000))
	if err != nil || res.PromptTokens+res.Tokens != 64 || res.Stop != backends.StopContext {
		t.Fatalf("context limit: %+v %v", res, err)
	}
	_, _, err = collect(t, e, context.Background(), greedyReq(strings.Repeat("long prompt ", 40), 5))
	if !errors.Is(err, backends.ErrPromptTooLong) {
		t.Fatalf("long prompt: %v", err)
	}
	if _, _, err := collect(t, e, context.Background(), backends.Request{Model: "other", Messages: []backends.Message{{Role: backends.RoleUser, Content: "x"}}}); !errors.Is(err, backends.ErrModelNotFound) {
		t.Fatalf("unknown model: %v", err)
	}
	info, err := e.Model(context.Background(), "")
	if err != nil || info.Name != "mcpd-tiny" || info.Parameters < 80_000 || info.Quantization != "F32" || info.ContextLength != 64 {
		t.Fatalf("model info %+v %v", info, err)
	}
}

func TestLlamaStopString(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{Threads: 1, Parallel: 1})
	full, _, err := collect(t, e, context.Background(), greedyReq("Hello, world", 24))
	if err != nil {
		t.Fatal(err)
	}
	if len(full) < 12 {
		t.Fatalf("output too short: %q", full)
	}
	// Stop on text from the middle; a stop that never occurs changes nothing.
	stop := full[len(full)/2 : len(full)/2+3]
	req := greedyReq("Hello, world", 24)
	req.Options.Stop = []string{"never-there", stop}
	got, res, err := collect(t, e, context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if want := full[:strings.Index(full, stop)]; got != want || res.Stop != backends.StopString {
		t.Fatalf("stop %q: got %q (%v), want %q", stop, got, res.Stop, want)
	}
}

func TestLlamaSampledSeed(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{Threads: 1, Parallel: 2})
	req := backends.Request{Messages: []backends.Message{{Role: backends.RoleUser, Content: "Hello"}}, Options: backends.Options{
		TemperatureSet: true, Temperature: 1.2, TopK: 50, TopP: 0.9, MinP: 0.02, RepeatPenalty: 1.3, Seed: 42, SeedSet: true, MaxTokens: 16}}
	a, _, err := collect(t, e, context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := collect(t, e, context.Background(), req)
	if a != b {
		t.Fatalf("same seed: %q vs %q", a, b)
	}
}

func TestLlamaBadModels(t *testing.T) {
	dir := t.TempDir()
	good, err := os.ReadFile(writeModel(t, gguf.TinySpec(1)))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"truncated": good[:len(good)-100], "random": bytes.Repeat([]byte("mcpd"), 1000),
		"wrong-magic": append([]byte("XXXX"), good[4:]...),
	}
	for name, data := range cases {
		p := filepath.Join(dir, name+".gguf")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := New(context.Background(), Config{ModelPath: p}); !errors.Is(err, backends.ErrUnavailable) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := New(context.Background(), Config{ModelPath: filepath.Join(dir, "none.gguf")}); !errors.Is(err, backends.ErrModelNotFound) {
		t.Errorf("missing: %v", err)
	}
}

func TestLlamaCloseAndBusy(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{Threads: 1, Parallel: 1, Queue: 1})
	// Hold the only sequence with a blocked emit, fill the queue, then
	// one more is refused.
	release := make(chan struct{})
	started := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		var once sync.Once
		_, err := e.Generate(context.Background(), greedyReq("Hello", 1000), func([]byte) error {
			once.Do(func() { close(started) })
			<-release
			return nil
		})
		first <- err
	}()
	<-started
	second := make(chan error, 1)
	go func() {
		_, _, err := collect(t, e, context.Background(), greedyReq("x", 4))
		second <- err
	}()
	for i := 0; len(e.queue) == 0; i++ { // until the second request waits
		if i == 1000 {
			t.Fatal("second request never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, _, err := collect(t, e, context.Background(), greedyReq("y", 4)); !errors.Is(err, backends.ErrBusy) {
		t.Fatalf("third request: %v", err)
	}
	// Close while one runs (blocked in emit) and one waits.
	closed := make(chan error, 1)
	go func() { closed <- e.Close() }()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for _, ch := range []chan error{first, second} {
		if err := <-ch; !errors.Is(err, backends.ErrClosed) {
			t.Errorf("request during close: %v", err)
		}
	}
	if err := e.Close(); !errors.Is(err, backends.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	if _, _, err := collect(t, e, context.Background(), greedyReq("x", 4)); !errors.Is(err, backends.ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	if err := e.Healthy(context.Background()); !errors.Is(err, backends.ErrClosed) {
		t.Fatalf("healthy after close: %v", err)
	}
}

func TestLlamaChatTemplate(t *testing.T) {
	s := gguf.TinySpec(1)
	s.ChatTemplate = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
	e := newEngine(t, writeModel(t, s), Config{Threads: 1, Parallel: 1})
	if e.tmpl == "" {
		t.Fatal("ChatML template not used")
	}
	if _, _, err := collect(t, e, context.Background(), greedyReq("hi", 4)); err != nil {
		t.Fatal(err)
	}
	s.ChatTemplate = "{{ something nobody knows }}"
	s.Name = "odd"
	e2 := newEngine(t, writeModel(t, s), Config{Threads: 1, Parallel: 1})
	if e2.tmpl != "" {
		t.Fatal("unknown template used")
	}
	if got := PlainTemplate([]backends.Message{{Role: backends.RoleSystem, Content: "be brief"}, {Role: backends.RoleUser, Content: "hi"}}); got != "System: be brief\nUser: hi\nAssistant:" {
		t.Fatalf("plain template %q", got)
	}
}

func TestTextStream(t *testing.T) {
	s := newTextStream(nil)
	euro := []byte("€") // 3 bytes
	var out []byte
	for _, b := range euro {
		piece, _ := s.add([]byte{b})
		if len(piece) > 0 && !utf8.Valid(piece) {
			t.Fatalf("split character %q", piece)
		}
		out = append(out, piece...)
	}
	if string(out) != "€" {
		t.Fatalf("got %q", out)
	}
	if p, _ := s.add([]byte{0xff, 'a'}); string(p) != "\uFFFDa" {
		t.Fatalf("invalid byte: %q", p)
	}
	if p, _ := s.add([]byte{0xe2, 0x82}); len(p) != 0 {
		t.Fatalf("incomplete emitted: %q", p)
	}
	if p := s.flush(); string(p) != "\uFFFD" {
		t.Fatalf("flush of a cut character: %q", p)
	}
	st := newTextStream([]string{"STOP"})
	var got string
	for _, piece := range []string{"ab", "cS", "T", "x", "yS", "TO", "Pzz"} {
		p, stopped := st.add([]byte(piece))
		got += string(p)
		if stopped {
			break
		}
	}
	if got != "abcSTxy" {
		t.Fatalf("stop: %q", got)
	}
}

// TestLlamaJoinAndLeave: a request that arrives while another generates
// joins the running batch, finishes first, and neither output changes.
func TestLlamaJoinAndLeave(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	e := newEngine(t, path, Config{Parallel: 2})
	longAlone, _, err := collect(t, e, context.Background(), greedyReq("the quick brown fox", 200))
	if err != nil {
		t.Fatal(err)
	}
	shortAlone, _, err := collect(t, e, context.Background(), greedyReq("zzz", 8))
	if err != nil {
		t.Fatal(err)
	}
	joined := make(chan struct{})
	shortDone := make(chan string, 1)
	var long strings.Builder
	pieces := 0
	_, err = e.Generate(context.Background(), greedyReq("the quick brown fox", 200), func(p []byte) error {
		long.Write(p)
		pieces++
		if pieces == 10 {
			go func() {
				close(joined)
				text, _, err := collect(t, e, context.Background(), greedyReq("zzz", 8))
				if err != nil {
					t.Error(err)
				}
				shortDone <- text
			}()
		}
		if pieces == 150 {
			select {
			case s := <-shortDone: // the short one left while we ran
				shortDone <- s
			case <-time.After(10 * time.Second):
				t.Error("short request did not finish while the long one ran")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	<-joined
	if got := <-shortDone; got != shortAlone {
		t.Errorf("short: %q, alone %q", got, shortAlone)
	}
	if long.String() != longAlone {
		t.Errorf("long output changed when another request joined")
	}
}

// TestDeviceTextIsNotParsedForSpecialTokens: with a chat template, the
// template's own special tokens are parsed, but "</s>" (the EOS control
// token of the tiny vocabulary) typed in a message stays text: a device
// cannot inject control or role tokens.
func TestDeviceTextIsNotParsedForSpecialTokens(t *testing.T) {
	s := gguf.TinySpec(1)
	s.ChatTemplate = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
	e := newEngine(t, writeModel(t, s), Config{Threads: 1, Parallel: 1})
	if e.tmpl == "" {
		t.Fatal("ChatML template not used")
	}
	eos, err := e.model.Tokenize("</s>", false, true)
	if err != nil || len(eos) != 1 {
		t.Fatalf("</s> as a control token: %v %v", eos, err)
	}
	for _, msgs := range [][]backends.Message{
		{{Role: backends.RoleUser, Content: "hi </s> there"}},
		{{Role: backends.RoleSystem, Content: "be brief"}, {Role: backends.RoleUser, Content: "</s></s>"}, {Role: backends.RoleAssistant, Content: "ok"}, {Role: backends.RoleUser, Content: "again </s>"}},
	} {
		toks, err := e.tokenizePrompt(msgs)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(toks, eos[0]) {
			t.Fatalf("device text became the control token %v: %v", eos[0], toks)
		}
		plain, _ := e.model.Tokenize("</s>", false, false)
		if len(plain) < 2 {
			t.Fatalf("</s> as text is %v", plain)
		}
	}
	// The engine still answers through the template.
	if _, _, err := collect(t, e, context.Background(), greedyReq("hi </s>", 4)); err != nil {
		t.Fatal(err)
	}
}
