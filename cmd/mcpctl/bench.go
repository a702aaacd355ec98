package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/internal/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// benchReport is what `mcpctl bench` measures.
type benchReport struct {
	Devices      int            `json:"devices"`
	Duration     float64        `json:"duration_s"`
	Requests     int            `json:"requests"`
	Errors       map[string]int `json:"errors"`
	Tokens       int64          `json:"tokens"`
	TokensPerSec float64        `json:"tokens_per_s"`
	TTFTp50      float64        `json:"ttft_p50_ms"`
	TTFTp95      float64        `json:"ttft_p95_ms"`
	TTFTp99      float64        `json:"ttft_p99_ms"`
	Latencyp50   float64        `json:"latency_p50_ms"`
	Latencyp99   float64        `json:"latency_p99_ms"`
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpctl bench --udp ADDR [flags]\n\nN simulated devices ask questions over UDP for a bounded time, each waiting\nfor its answer before the next; reports requests, errors by code, time to\nfirst token (p50/p95/p99), latency and tokens/s.\n\nFlags:")
		fs.PrintDefaults()
	}
	addr := fs.String("udp", "", "daemon's UDP address")
	devices := fs.Int("devices", 4, "simulated devices")
	duration := fs.Duration("duration", 10*time.Second, "how long to run")
	maxRequests := fs.Int("requests", 0, "stop after this many requests in all (0: only the duration bounds the run)")
	prompt := fs.String("prompt", "Summarise the sensor readings: soil 31 %, air 24.5 °C.", "the prompt each device sends")
	maxTokens := fs.Int("max-tokens", 32, "MAX_TOKENS of each request")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *devices < 1 || *duration <= 0 {
		fs.Usage()
		return errors.New("bench needs --udp, --devices ≥ 1 and a positive --duration")
	}
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	var (
		mu        sync.Mutex
		ttfts     []time.Duration
		latencies []time.Duration
		rep       = benchReport{Devices: *devices, Errors: map[string]int{}}
		issued    int
	)
	take := func() bool { // one more request within the --requests budget?
		mu.Lock()
		defer mu.Unlock()
		if *maxRequests > 0 && issued >= *maxRequests {
			return false
		}
		issued++
		return true
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range *devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t, err := device.DialUDP(*addr)
			if err != nil {
				mu.Lock()
				rep.Errors["dial"]++
				mu.Unlock()
				return
			}
			defer t.Close()
			c := device.New(t, device.Config{DeviceID: fmt.Sprintf("bench-%d", i)})
			if err := c.Hello(ctx); err != nil {
				mu.Lock()
				rep.Errors["hello"]++
				mu.Unlock()
				return
			}
			m := &sp.Infer{Set: sp.OptionSet(0).With(sp.OptMaxTokens).With(sp.OptNewChat), MaxTokens: uint16(*maxTokens), Prompt: *prompt}
			for ctx.Err() == nil && take() {
				t0 := time.Now()
				var first time.Duration
				done, err := c.Ask(ctx, m, func([]byte) error {
					if first == 0 {
						first = time.Since(t0)
					}
					return nil
				})
				lat := time.Since(t0)
				mu.Lock()
				var perr *sp.Error
				switch {
				case err == nil:
					rep.Requests++
					rep.Tokens += int64(done.Tokens)
					ttfts = append(ttfts, first)
					latencies = append(latencies, lat)
				case ctx.Err() != nil: // the run ended mid-request: not an error of the daemon's
				case errors.As(err, &perr):
					rep.Errors[perr.Code.String()]++
				default:
					rep.Errors["transport"]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	rep.Duration = el.Seconds()
	rep.TokensPerSec = float64(rep.Tokens) / el.Seconds()
	rep.TTFTp50, rep.TTFTp95, rep.TTFTp99 = pct(ttfts, 50), pct(ttfts, 95), pct(ttfts, 99)
	rep.Latencyp50, rep.Latencyp99 = pct(latencies, 50), pct(latencies, 99)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "%d devices, %.1f s: %d requests, %d errors %v\n", rep.Devices, rep.Duration, rep.Requests, sum(rep.Errors), rep.Errors)
	fmt.Fprintf(stdout, "time to first token: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms\n", rep.TTFTp50, rep.TTFTp95, rep.TTFTp99)
	fmt.Fprintf(stdout, "request latency: p50 %.2f ms, p99 %.2f ms; %d tokens, %.1f tokens/s\n", rep.Latencyp50, rep.Latencyp99, rep.Tokens, rep.TokensPerSec)
	return nil
}

// pct is the p-th percentile in milliseconds (nearest rank).
func pct(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := min(len(s)-1, (len(s)*p+99)/100-1)
	return float64(s[max(i, 0)].Microseconds()) / 1000
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
