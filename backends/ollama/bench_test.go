package ollama

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/detect"
	"github.com/mcpd-project/mcpd/internal/ollamatest"
)

// BenchmarkOllamaOverhead measures what the Ollama backend adds to a bare
// api.Client: the same fake server, the same request, alternating between
// the two in every iteration so both see the same machine state. It
// reports time to first token and tokens/s of each and their ratios
// (backend / direct): the goal is overhead ≤ 2 %, i.e. a TTFT ratio ≤ 1.02
// and a tokens/s ratio ≥ 0.98.
//
// "instant" has no delay between tokens: the worst case, where only HTTP,
// JSON and our own work count. "paced" has 2 ms per token, closer to a
// real model on a GPU.
func BenchmarkOllamaOverhead(b *testing.B) {
	tokens := make([]string, 64)
	for i := range tokens {
		tokens[i] = fmt.Sprintf(" tok%02d", i)
	}
	for _, c := range []struct {
		name  string
		delay time.Duration
	}{{"instant", 0}, {"paced", 2 * time.Millisecond}} {
		b.Run(c.name, func(b *testing.B) {
			srv := ollamatest.Start(b, ollamatest.Config{Tokens: tokens, TokenDelay: c.delay})
			// The backend as the daemon sees it: the Selector in front of
			// the Ollama engine.
			noGPU := &detect.Detector{Root: b.TempDir(), Run: func(context.Context, string, ...string) ([]byte, error) {
				return nil, errors.New("no nvidia-smi")
			}}
			o, err := backends.Open(context.Background(), backends.OpenConfig{Policy: backends.PolicyOllama, Detector: noGPU,
				Ollama: Starter(Config{Endpoints: []string{srv.URL()}, Model: "tiny"}), Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { o.Close() })
			u, _ := url.Parse(srv.URL())
			direct := api.NewClient(u, &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}})
			req := backends.Request{Messages: []backends.Message{{Role: backends.RoleUser, Content: "hello"}}, Options: backends.Options{MaxTokens: 64, TemperatureSet: true}}
			stream := true
			chat := &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "hello"}}, Stream: &stream,
				Options: map[string]any{"num_predict": 64, "temperature": 0}}
			ctx := context.Background()

			runDirect := func() (ttft, total time.Duration, n int) {
				start := time.Now()
				err := direct.Chat(ctx, chat, func(r api.ChatResponse) error {
					if r.Message.Content != "" {
						if n == 0 {
							ttft = time.Since(start)
						}
						n++
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
				return ttft, time.Since(start), n
			}
			runBackend := func() (ttft, total time.Duration, n int) {
				start := time.Now()
				_, err := o.Generate(ctx, req, func(p []byte) error {
					if n == 0 {
						ttft = time.Since(start)
					}
					n++
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
				return ttft, time.Since(start), n
			}
			runDirect() // warm both connections
			runBackend()
			// Per-request samples; medians resist the pauses a shared
			// machine adds to single requests.
			var dTTFT, bTTFT, dRate, bRate []float64
			b.ResetTimer()
			for i := range b.N {
				first, second := runDirect, runBackend
				if i%2 == 1 {
					first, second = runBackend, runDirect
				}
				t1, d1, n1 := first()
				t2, d2, n2 := second()
				if i%2 == 1 {
					t1, d1, n1, t2, d2, n2 = t2, d2, n2, t1, d1, n1
				}
				if n1 != n2 {
					b.Fatalf("direct got %d pieces, backend %d", n1, n2)
				}
				dTTFT, dRate = append(dTTFT, float64(t1.Microseconds())), append(dRate, float64(n1)/d1.Seconds())
				bTTFT, bRate = append(bTTFT, float64(t2.Microseconds())), append(bRate, float64(n2)/d2.Seconds())
			}
			b.StopTimer()
			dt, bt, dr, br := median(dTTFT), median(bTTFT), median(dRate), median(bRate)
			b.ReportMetric(dt, "direct-ttft-µs")
			b.ReportMetric(bt, "backend-ttft-µs")
			b.ReportMetric(bt/dt, "ttft-ratio")
			b.ReportMetric(dr, "direct-tok/s")
			b.ReportMetric(br, "backend-tok/s")
			b.ReportMetric(br/dr, "tok/s-ratio")
		})
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
