package llamacpp

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native/gguf"
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
	path := os.Getenv("MCPD_BENCH_MODEL")
	if path == "" {
		path = writeModel(b, gguf.TinySpec(1))
	}
	threads, _ := strconv.Atoi(os.Getenv("MCPD_BENCH_THREADS"))
	if threads == 0 {
		threads = 2
	}
	cfg.ModelPath, cfg.Threads, cfg.SequenceContext, cfg.Logger = path, threads, 512, slog.New(slog.DiscardHandler)
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
