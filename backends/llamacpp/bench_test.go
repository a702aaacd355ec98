package llamacpp

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
)

// Benchmarks of the llama.cpp engine. By default they run on the tiny model
// (a smoke test of the harness); `make bench-native` runs them on the
// generated 135M Q8_0 model with 2 threads, the project's reference shape,
// via MCPD_BENCH_MODEL and MCPD_BENCH_THREADS.
//
// Metrics: gen-tok/s is decode speed after the first token; prompt-tok/s
// is prompt tokens over time to first token; ttft-ms is time to first
// token for a short prompt; agg-tok/s is the total generated tokens per
// second of N concurrent requests; peak-rss-MB is the process's VmHWM.

func benchEngine(b *testing.B, parallel int) *Engine {
	b.Helper()
	return benchEngineCfg(b, Config{Parallel: parallel})
}

// benchEngineCfg starts an engine with cfg on the benchmark model.
func benchEngineCfg(b *testing.B, cfg Config) *Engine {
	b.Helper()
	path, threads := benchModel(b)
	if cfg.SequenceContext == 0 {
		cfg.SequenceContext = 512
	}
	cfg.ModelPath, cfg.Threads, cfg.Logger = path, threads, slog.New(slog.DiscardHandler)
	e, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	return e
}

func discard([]byte) error { return nil }

func BenchmarkNativeGenerate(b *testing.B) {
	e := benchEngine(b, 1)
	const n = 128
	var toks int
	var decode, ttft time.Duration
	for b.Loop() {
		res, err := e.Generate(context.Background(), greedyReq("Hello", n), discard)
		if err != nil {
			b.Fatal(err)
		}
		toks += res.Tokens - 1
		decode += res.Duration - res.TTFT
		ttft += res.TTFT
	}
	b.ReportMetric(float64(toks)/decode.Seconds(), "gen-tok/s")
	b.ReportMetric(float64(ttft.Milliseconds())/float64(b.N), "ttft-ms")
	reportRSS(b)
}

// BenchmarkNativePrompt: the same prompt again and again, evaluated whole
// (NoKVReuse: prompt processing speed) and found in the KV cache (only
// its last token evaluated: what a repeated prompt costs by default).
func BenchmarkNativePrompt(b *testing.B) {
	for _, c := range []struct {
		name    string
		noReuse bool
	}{{"whole", true}, {"cached", false}} {
		b.Run(c.name, func(b *testing.B) {
			e := benchEngineCfg(b, Config{Parallel: 1, NoKVReuse: c.noReuse})
			prompt := strings.Repeat("the sensor reads twenty one degrees ", 8)
			var toks int
			var ttft time.Duration
			for b.Loop() {
				res, err := e.Generate(context.Background(), greedyReq(prompt, 1), discard)
				if err != nil {
					b.Fatal(err)
				}
				toks += res.PromptTokens
				ttft += res.TTFT
			}
			b.ReportMetric(float64(toks)/ttft.Seconds(), "prompt-tok/s")
			b.ReportMetric(float64(ttft.Microseconds())/1000/float64(b.N), "ttft-ms")
		})
	}
}

func BenchmarkNativeParallel(b *testing.B) {
	for _, par := range []int{1, 4, 8} {
		b.Run(fmt.Sprintf("seqs=%d", par), func(b *testing.B) {
			e := benchEngine(b, par)
			const n = 64
			var toks int
			var elapsed time.Duration
			for b.Loop() {
				start := time.Now()
				var wg sync.WaitGroup
				var mu sync.Mutex
				for i := range par {
					wg.Go(func() {
						res, err := e.Generate(context.Background(), greedyReq(fmt.Sprintf("device %d says hello", i), n), discard)
						if err != nil {
							b.Error(err)
						}
						mu.Lock()
						toks += res.Tokens
						mu.Unlock()
					})
				}
				wg.Wait()
				elapsed += time.Since(start)
			}
			b.ReportMetric(float64(toks)/elapsed.Seconds(), "agg-tok/s")
			st := e.Stats()
			b.ReportMetric(float64(st.Outputs)/float64(st.Steps), "seqs/step")
			reportRSS(b)
		})
	}
}

// reportRSS reports the peak resident set size (Linux only).
func reportRSS(b *testing.B) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			b.ReportMetric(float64(kb)/1024, "peak-rss-MB")
		}
	}
}

// BenchmarkSharedPrefix: a second device whose conversation starts with
// the same system prompt as a first device's (which stays in its own
// sequence): time to its first token with KV reuse (the system prompt
// copied from the first device's sequence) and without (evaluated again).
// Each iteration is a new second device: its own question, the first
// device's conversation unchanged.
func BenchmarkSharedPrefix(b *testing.B) {
	system := strings.Repeat("You are the greenhouse controller's assistant: answer briefly, name each sensor and its unit. ", 6)
	for _, c := range []struct {
		name    string
		noReuse bool
	}{{"reuse", false}, {"whole", true}} {
		b.Run(c.name, func(b *testing.B) {
			e := benchEngineCfg(b, Config{Parallel: 4, NoKVReuse: c.noReuse})
			ask := func(user string) backends.Result {
				req := greedyReq(user, 1)
				req.Messages = append([]backends.Message{{Role: backends.RoleSystem, Content: system}}, req.Messages...)
				res, err := e.Generate(context.Background(), req, discard)
				if err != nil {
					b.Fatal(err)
				}
				return res
			}
			ask("first device: what is the soil moisture?")
			var ttft time.Duration
			var cached, prompt int
			i := 0
			for b.Loop() {
				i++
				res := ask(fmt.Sprintf("device %d: is the east bed too dry?", i))
				ttft += res.TTFT
				cached += res.PromptCached
				prompt += res.PromptTokens
			}
			b.ReportMetric(float64(ttft.Microseconds())/1000/float64(b.N), "ttft-ms")
			b.ReportMetric(100*float64(cached)/float64(prompt), "cached-%")
		})
	}
}

// BenchmarkWarmRestart: the first turn of an old conversation after a
// restart, with the warm cache the engine saved when it closed (warm) and
// without it (cold), alternating in the same run; both start a new
// engine on the same model. ttft-ms is the turn's time to first token;
// start-ms is New's (loading the model, and the warm file for warm);
// cold/warm is the ratio of their time to first token.
func BenchmarkWarmRestart(b *testing.B) {
	system := strings.Repeat("You are the greenhouse controller's assistant: answer briefly, name each sensor and its unit. ", 6)
	msgs := []backends.Message{{Role: backends.RoleSystem, Content: system}}
	ask := func(e *Engine, user string) backends.Result {
		req := greedyReq(user, 8)
		req.Messages = append(append([]backends.Message(nil), msgs...), req.Messages...)
		var out strings.Builder
		res, err := e.Generate(context.Background(), req, func(p []byte) error { out.Write(p); return nil })
		if err != nil {
			b.Fatal(err)
		}
		msgs = append(msgs, req.Messages[len(req.Messages)-1], backends.Message{Role: backends.RoleAssistant, Content: out.String()})
		return res
	}
	dir := b.TempDir()
	saved := filepath.Join(dir, "saved.kv")
	first := benchEngineCfg(b, Config{Parallel: 2, SequenceContext: 1024, WarmFile: saved})
	for _, q := range []string{"What is the soil moisture in the east bed?", "And the temperature there?", "Is it too dry?"} {
		ask(first, q)
	}
	if err := first.Close(); err != nil {
		b.Fatal(err)
	}
	state, err := os.ReadFile(saved)
	if err != nil {
		b.Fatal(err)
	}
	history := msgs
	next := func(warm bool) (ttft, start time.Duration, cached int) {
		cfg := Config{Parallel: 2, SequenceContext: 1024}
		if warm {
			// A copy each time: the engine saves its own state when it closes.
			cfg.WarmFile = filepath.Join(dir, "warm.kv")
			if err := os.WriteFile(cfg.WarmFile, state, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		t0 := time.Now()
		e := benchEngineCfg(b, cfg)
		start = time.Since(t0)
		msgs = history
		res := ask(e, "What should I do about it?")
		e.Close()
		return res.TTFT, start, res.PromptCached
	}
	var warmTTFT, coldTTFT, warmStart, coldStart time.Duration
	var cached, n int
	for b.Loop() {
		t, s, c := next(true)
		warmTTFT, warmStart, cached = warmTTFT+t, warmStart+s, cached+c
		t, s, _ = next(false)
		coldTTFT, coldStart = coldTTFT+t, coldStart+s
		n++
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	b.ReportMetric(ms(warmTTFT), "warm-ttft-ms")
	b.ReportMetric(ms(coldTTFT), "cold-ttft-ms")
	b.ReportMetric(float64(coldTTFT)/float64(warmTTFT), "cold/warm")
	b.ReportMetric(ms(warmStart), "warm-start-ms")
	b.ReportMetric(ms(coldStart), "cold-start-ms")
	b.ReportMetric(float64(cached)/float64(n), "cached-tokens")
	b.ReportMetric(float64(len(state))/(1<<20), "file-MiB")
}

// BenchmarkWarmSaveHold: how long a save while serving (a reload, a
// periodic save) holds the scheduler at most — it copies each sequence's
// state between two decode steps, and no request decodes meanwhile — with
// a conversation of a ~300-token system prompt and three turns and
// another device's question held, and how long writing the file takes
// after (on the caller's goroutine, the engine decoding meanwhile).
func BenchmarkWarmSaveHold(b *testing.B) {
	system := strings.Repeat("You are the greenhouse controller's assistant: answer briefly, name each sensor and its unit. ", 6)
	e := benchEngineCfg(b, Config{Parallel: 2, SequenceContext: 1024, WarmFile: filepath.Join(b.TempDir(), "warm.kv")})
	msgs := []backends.Message{{Role: backends.RoleSystem, Content: system}}
	for _, q := range []string{"What is the soil moisture in the east bed?", "And the temperature there?", "Is it too dry?"} {
		req := greedyReq(q, 8)
		req.Messages = append(append([]backends.Message(nil), msgs...), req.Messages...)
		var out strings.Builder
		if _, err := e.Generate(context.Background(), req, func(p []byte) error { out.Write(p); return nil }); err != nil {
			b.Fatal(err)
		}
		msgs = append(msgs, req.Messages[len(req.Messages)-1], backends.Message{Role: backends.RoleAssistant, Content: out.String()})
	}
	if _, err := e.Generate(context.Background(), greedyReq("Humidity in the west bed?", 8), discard); err != nil {
		b.Fatal(err)
	}
	var held, whole, write time.Duration
	var size int64
	for b.Loop() {
		// All sequences in one step, as before the copies were spread.
		e.warmPrinted.Store(false)
		var all warmSnapshot
		if err := e.onScheduler(context.Background(), &all, func(kv *kvState, slots []*slot) { e.snapshotWarm(kv, slots) }); err != nil {
			b.Fatal(err)
		}
		whole += all.held
		e.warmPrinted.Store(false) // as after a change: copy and write
		s, err := e.takeWarm(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		held += s.held
		t0 := time.Now()
		if err := e.writeSnapshot(s); err != nil {
			b.Fatal(err)
		}
		write += time.Since(t0)
		size = 0
		for _, r := range s.recs {
			size += r.Size()
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(held), "held-ms")
	b.ReportMetric(ms(whole), "held-one-step-ms")
	b.ReportMetric(ms(write), "write-ms")
	b.ReportMetric(float64(size)/(1<<20), "state-MiB")
}
