package bench

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends/llamacpp"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
)

// resumeRun is a daemon with the in-process engine keeping its warm file
// and the devices' conversations in dir, on loopback UDP.
type resumeRun struct {
	e    *llamacpp.Engine
	addr string
	stop func() // ends the daemon (saving the conversations), then the engine (saving its caches)
}

func startResumeRun(b *testing.B, model string, threads int, dir string, key serialproto.Key) *resumeRun {
	b.Helper()
	quiet := slog.New(slog.DiscardHandler)
	e, err := llamacpp.New(context.Background(), llamacpp.Config{ModelPath: model, Threads: threads, Parallel: 2,
		SequenceContext: 1024, WarmFile: filepath.Join(dir, "kv-warm.mcpdkv"), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	d, err := daemon.New(daemon.Config{PeerRate: -1, Keys: map[string]serialproto.Key{"greenhouse": key},
		ChatFile: filepath.Join(dir, "chats.mcpdch"), ChatModel: model}, e, quiet)
	if err != nil {
		b.Fatal(err)
	}
	l, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, l) }()
	return &resumeRun{e: e, addr: l.Addr().String(), stop: func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
		e.Close()
	}}
}

// BenchmarkResumeRestart: a signed device's conversation (a system prompt
// and six turns of 24-token answers) after mcpd restarted: the device says
// HELLO with RESUME and asks its next question. warm: the daemon started
// with the conversations and the engine's warm file both saved at stop;
// cold: with the conversations only (the model sees the same prompt, all
// of it evaluated). Interleaved in the same run, each iteration a new
// engine and daemon from copies of the files. ttft-ms is the time to the
// first text at the device.
func BenchmarkResumeRestart(b *testing.B) {
	model, threads := benchModel(b)
	key, err := serialproto.NewKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		b.Fatal(err)
	}
	system := strings.Repeat("You are the greenhouse controller's assistant: answer briefly, name each sensor and its unit. ", 2) // SYSTEM ≤ 253 bytes
	// dial says HELLO with RESUME as the device "greenhouse".
	dial := func(addr string, wantResumed bool) *device.Client {
		tr, err := device.DialUDP(addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.Close() })
		c := device.New(tr, device.Config{DeviceID: "greenhouse", Key: key, Resume: true})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Hello(ctx); err != nil {
			b.Fatal(err)
		}
		if c.Resumed() != wantResumed {
			b.Fatalf("resumed %v, want %v", c.Resumed(), wantResumed)
		}
		return c
	}
	ask := func(c *device.Client, q string) (ttft time.Duration, done *serialproto.Done) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptSystem),
			MaxTokens: 24, System: system, Prompt: q}
		start := time.Now()
		done, err := c.Ask(ctx, m, func([]byte) error {
			if ttft == 0 {
				ttft = time.Since(start)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		return ttft, done
	}
	saved := b.TempDir()
	first := startResumeRun(b, model, threads, saved, key)
	c := dial(first.addr, false)
	for _, q := range []string{"What is the soil moisture in the east bed?", "And the temperature there?", "Is it too dry?",
		"What about the west bed, and the greenhouse door?", "Should the fans run this afternoon?", "And tonight?"} {
		ask(c, q)
	}
	first.stop()
	files := map[string][]byte{}
	for _, name := range []string{"kv-warm.mcpdkv", "chats.mcpdch"} {
		if files[name], err = os.ReadFile(filepath.Join(saved, name)); err != nil {
			b.Fatal(err)
		}
	}
	type turn struct {
		ttft, engineTTFT time.Duration
		prompt, cached   int64
	}
	next := func(warm bool) turn {
		dir := b.TempDir()
		for name, data := range files {
			if name == "kv-warm.mcpdkv" && !warm {
				continue
			}
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		r := startResumeRun(b, model, threads, dir, key)
		defer r.stop()
		t, done := ask(dial(r.addr, true), "What should I do about it?")
		return turn{t, time.Duration(done.TTFTMS) * time.Millisecond, int64(done.PromptTokens), r.e.Stats().PromptCached}
	}
	var warm, cold turn
	n := 0
	for b.Loop() {
		w, c := next(true), next(false)
		if w.prompt != c.prompt {
			b.Fatalf("warm and cold prompts of %d and %d tokens", w.prompt, c.prompt)
		}
		warm = turn{warm.ttft + w.ttft, warm.engineTTFT + w.engineTTFT, w.prompt, warm.cached + w.cached}
		cold = turn{cold.ttft + c.ttft, cold.engineTTFT + c.engineTTFT, c.prompt, cold.cached + c.cached}
		n++
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	b.ReportMetric(ms(warm.ttft), "warm-ttft-ms")
	b.ReportMetric(ms(cold.ttft), "cold-ttft-ms")
	b.ReportMetric(float64(cold.ttft)/float64(warm.ttft), "cold/warm")
	b.ReportMetric(ms(warm.engineTTFT), "warm-done-ttft-ms")
	b.ReportMetric(ms(cold.engineTTFT), "cold-done-ttft-ms")
	b.ReportMetric(float64(warm.prompt), "prompt-tokens")
	b.ReportMetric(float64(warm.cached)/float64(n), "warm-cached-tokens")
	b.ReportMetric(float64(cold.cached)/float64(n), "cold-cached-tokens")
	b.ReportMetric(float64(len(files["chats.mcpdch"])), "chat-file-bytes")
}
