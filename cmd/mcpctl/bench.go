package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// benchReport is what `mcpctl bench` measures: one entry per scenario.
type benchReport struct {
	Started   time.Time        `json:"started"`
	Target    string           `json:"target"` // the daemon: an address, or "spawned: bin/mcpd, model …"
	Prompt    string           `json:"prompt"`
	MaxTokens int              `json:"max_tokens"`
	Warmup    int              `json:"warmup_per_device"`
	Scenarios []scenarioReport `json:"scenarios"`
}

// scenarioReport is one scenario's figures. Times in milliseconds.
type scenarioReport struct {
	Name         string         `json:"name"`
	Transport    string         `json:"transport"` // udp, serial
	Baud         int            `json:"baud,omitempty"`
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
	Latencyp95   float64        `json:"latency_p95_ms"`
	Latencyp99   float64        `json:"latency_p99_ms"`
	// Latencies are every request's latency, for the histogram.
	Latencies []float64 `json:"latencies_ms"`
	TTFTs     []float64 `json:"ttfts_ms"`
	// The chat scenario: time to first token by turn (p50), and the last
	// turn's over the first's.
	TurnTTFTp50   []float64 `json:"turn_ttft_p50_ms,omitempty"`
	LastOverFirst float64   `json:"ttft_last_over_first,omitempty"`
}

// scenario is a set of simulated devices and how each reaches the daemon.
type scenario struct {
	name      string
	transport string
	baud      int
	devices   int
	dial      func(i int) (device.Transport, error)
	config    func(i int) device.Config
}

// benchOptions bound every scenario the same way.
type benchOptions struct {
	duration    time.Duration
	maxRequests int // in all, per scenario; 0: the duration alone bounds it
	warmup      int // unmeasured requests per device first
	prompt      string
	maxTokens   int
	log         io.Writer // the first error of each kind is told here
}

const benchUsage = `usage: mcpctl bench [flags]

Simulated devices ask questions for a bounded time, each waiting for its
answer before the next, after a few unmeasured warm-up requests. Scenarios:

  single   one device over UDP: latency without contention
  udp      --devices devices over UDP at once
  serial   one device over a serial line (--serial PATH, or with --mcpd a
           pseudo-terminal pair paced at --baud like a real UART)
  chat     one device over UDP holding --turns-turn conversations: time to
           first token by turn, and the last turn's over the first's

Against a running daemon give --udp (and/or --serial); or give --mcpd and
--model and bench starts its own mcpd on loopback UDP and a paced pty,
runs the scenarios, and stops it. Reports p50/p95/p99 time to first token
and latency, tokens/s and errors by code, as text, JSON (--json, --json-out),
markdown (--markdown) and a latency histogram PNG (--png).

Flags:
`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage); fs.PrintDefaults() }
	addr := fs.String("udp", "", "daemon's UDP address")
	serialPath := fs.String("serial", "", "serial port to the daemon (device side)")
	mqttURL := fs.String("mqtt", "", "MQTT broker the daemon serves, tcp://[user:password@]host:1883; every device uses that account")
	baud := fs.Int("baud", 115200, "serial baud rate (the pty pair is paced at it)")
	mcpd := fs.String("mcpd", "", "start this mcpd binary for the run (with --model) instead of using --udp/--serial")
	model := fs.String("model", "", "GGUF model for the spawned mcpd")
	threads := fs.Int("threads", 0, "the spawned mcpd's --threads (0: its default)")
	scenarios := fs.String("scenario", "", "comma-separated: single, udp, serial, mqtt-single, mqtt, chat (default: those the targets allow, without chat)")
	turns := fs.Int("turns", 10, "turns of each conversation of the chat scenario")
	var mcpdFlags stringsFlag
	fs.Var(&mcpdFlags, "mcpd-flag", "a flag for the spawned mcpd, e.g. --mcpd-flag=--no-kv-reuse (repeatable)")
	devices := fs.Int("devices", 4, "simulated devices of the udp scenario")
	duration := fs.Duration("duration", 10*time.Second, "how long each scenario runs")
	maxRequests := fs.Int("requests", 0, "stop a scenario after this many requests (0: only the duration bounds it)")
	warmup := fs.Int("warmup", 1, "unmeasured requests per device before the measurement")
	prompt := fs.String("prompt", "Summarise the sensor readings: soil 31 %, air 24.5 °C.", "the prompt each device sends")
	maxTokens := fs.Int("max-tokens", 32, "MAX_TOKENS of each request")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	jsonOut := fs.String("json-out", "", "also write the JSON report to this file")
	mdOut := fs.String("markdown", "", "also write a markdown report to this file")
	pngOut := fs.String("png", "", "also write a latency histogram (PNG) to this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *devices < 1 || *duration <= 0 || *warmup < 0 || *maxTokens < 1 || *maxTokens > 65535 || *turns < 1 {
		fs.Usage()
		return errors.New("bench needs --devices ≥ 1, a positive --duration, --warmup ≥ 0, 1 ≤ --max-tokens ≤ 65535, --turns ≥ 1")
	}
	rep := benchReport{Started: time.Now().UTC(), Prompt: *prompt, MaxTokens: *maxTokens, Warmup: *warmup}
	if *mcpd != "" {
		if *model == "" {
			return errors.New("bench --mcpd needs --model")
		}
		sp, err := spawnMcpd(ctx, *mcpd, *model, *baud, *threads, mcpdFlags, stderr)
		if err != nil {
			return err
		}
		defer sp.stop()
		*addr, *serialPath = sp.udp, sp.devicePort
		rep.Target = fmt.Sprintf("spawned %s --model %s (UDP %s, pty paced at %d baud)", *mcpd, *model, sp.udp, *baud)
		if len(mcpdFlags) > 0 {
			rep.Target += " with " + strings.Join(mcpdFlags, " ")
		}
		if err := sp.ready(ctx); err != nil {
			return err
		}
	} else {
		rep.Target = strings.Trim(strings.Join([]string{*addr, *serialPath, redactURL(*mqttURL)}, " "), " ")
	}
	names := strings.Split(*scenarios, ",")
	if *scenarios == "" {
		names = nil
		if *addr != "" {
			names = append(names, "single", "udp")
		}
		if *serialPath != "" {
			names = append(names, "serial")
		}
		if *mqttURL != "" {
			names = append(names, "mqtt-single", "mqtt")
		}
	}
	if len(names) == 0 {
		fs.Usage()
		return errors.New("bench needs --udp, --serial, --mqtt or --mcpd")
	}
	opts := benchOptions{duration: *duration, maxRequests: *maxRequests, warmup: *warmup, prompt: *prompt, maxTokens: *maxTokens, log: stderr}
	for _, name := range names {
		sc, err := makeScenario(ctx, strings.TrimSpace(name), *addr, *serialPath, *mqttURL, *baud, *devices)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "bench: scenario %s (%s over %s) for %v\n", sc.name, plural(sc.devices, "device", "devices"), sc.transport, *duration)
		if sc.name == "chat" {
			rep.Scenarios = append(rep.Scenarios, runChat(ctx, sc, opts, *turns))
		} else {
			rep.Scenarios = append(rep.Scenarios, runScenario(ctx, sc, opts))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := writeReports(rep, *jsonOut, *mdOut, *pngOut); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	writeText(stdout, rep)
	return nil
}

// writeText is the report as the terminal shows it.
func writeText(stdout io.Writer, rep benchReport) {
	for _, s := range rep.Scenarios {
		errs := "no errors"
		if n := sum(s.Errors); n > 0 {
			errs = plural(n, "error", "errors") + " (" + errorList(s.Errors) + ")"
		}
		fmt.Fprintf(stdout, "%s: %s over %s, %.1f s: %s, %s\n", s.Name, plural(s.Devices, "device", "devices"), s.Transport, s.Duration,
			plural(s.Requests, "request", "requests"), errs)
		fmt.Fprintf(stdout, "  time to first token: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms\n", s.TTFTp50, s.TTFTp95, s.TTFTp99)
		fmt.Fprintf(stdout, "  request latency: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms; %d tokens, %.1f tokens/s\n", s.Latencyp50, s.Latencyp95, s.Latencyp99, s.Tokens, s.TokensPerSec)
		writeTurns(stdout, s)
	}
}

func makeScenario(ctx context.Context, name, addr, serialPath, mqttURL string, baud, devices int) (scenario, error) {
	udp := func(int) (device.Transport, error) { return device.DialUDP(addr) }
	mqtt := func(prefix string) func(int) (device.Transport, error) {
		return func(i int) (device.Transport, error) {
			return device.DialMQTT(ctx, device.MQTTConfig{URL: mqttURL, DeviceID: fmt.Sprintf("%s-%d", prefix, i)})
		}
	}
	cfg := func(prefix string) func(int) device.Config {
		return func(i int) device.Config { return device.Config{DeviceID: fmt.Sprintf("%s-%d", prefix, i)} }
	}
	switch name {
	case "single":
		if addr == "" {
			return scenario{}, errors.New("scenario single needs --udp")
		}
		return scenario{name: name, transport: "udp", devices: 1, dial: udp, config: cfg("bench-single")}, nil
	case "udp":
		if addr == "" {
			return scenario{}, errors.New("scenario udp needs --udp")
		}
		return scenario{name: name, transport: "udp", devices: devices, dial: udp, config: cfg("bench-udp")}, nil
	case "serial":
		if serialPath == "" {
			return scenario{}, errors.New("scenario serial needs --serial")
		}
		return scenario{name: name, transport: "serial", baud: baud, devices: 1,
			dial: func(int) (device.Transport, error) { return device.OpenSerial(serialPath, baud) },
			config: func(int) device.Config {
				// A UART device: small frames, a window of 2, the RTO a UART needs.
				return device.Config{DeviceID: "bench-serial", MaxData: 64, Window: 2, RTO: device.SerialRTO(baud, 2)}
			}}, nil
	case "chat":
		if addr == "" {
			return scenario{}, errors.New("scenario chat needs --udp")
		}
		return scenario{name: name, transport: "udp", devices: 1, dial: udp, config: cfg("bench-chat")}, nil
	case "mqtt-single", "mqtt":
		if mqttURL == "" {
			return scenario{}, fmt.Errorf("scenario %s needs --mqtt", name)
		}
		n, prefix := devices, "bench-mqtt"
		if name == "mqtt-single" {
			n, prefix = 1, "bench-mqtt-single"
		}
		return scenario{name: name, transport: "mqtt", devices: n, dial: mqtt(prefix), config: cfg(prefix)}, nil
	}
	return scenario{}, fmt.Errorf("unknown scenario %q (single, udp, serial, mqtt-single, mqtt, chat)", name)
}

// runScenario runs sc's devices: HELLO, the warm-up requests, then
// measured requests until the duration or the request budget is spent.
func runScenario(ctx context.Context, sc scenario, o benchOptions) scenarioReport {
	var (
		mu        sync.Mutex
		ttfts     []time.Duration
		latencies []time.Duration
		rep       = scenarioReport{Name: sc.name, Transport: sc.transport, Baud: sc.baud, Devices: sc.devices, Errors: map[string]int{}}
		issued    int
	)
	fail := func(kind string) {
		mu.Lock()
		rep.Errors[kind]++
		mu.Unlock()
	}
	take := func() bool { // one more request within the --requests budget?
		mu.Lock()
		defer mu.Unlock()
		if o.maxRequests > 0 && issued >= o.maxRequests {
			return false
		}
		issued++
		return true
	}
	m := &sp.Infer{Set: sp.OptionSet(0).With(sp.OptMaxTokens).With(sp.OptNewChat), MaxTokens: uint16(o.maxTokens), Prompt: o.prompt}

	// Connect and warm up every device first, so the measured phase starts
	// for all at once.
	clients := make([]*device.Client, sc.devices)
	var wg sync.WaitGroup
	for i := range sc.devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t, err := sc.dial(i)
			if err != nil {
				fail("dial")
				return
			}
			c := device.New(t, sc.config(i))
			hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := c.Hello(hctx); err != nil {
				t.Close()
				fail("hello")
				return
			}
			for range o.warmup {
				wctx, cancel := context.WithTimeout(ctx, o.duration)
				_, _ = c.Ask(wctx, m, func([]byte) error { return nil })
				cancel()
			}
			clients[i] = c
			go func() { <-ctx.Done(); t.Close() }() // hello-bound transports end with the run
		}()
	}
	wg.Wait()

	runCtx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	start := time.Now()
	for _, c := range clients {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for runCtx.Err() == nil && take() {
				t0 := time.Now()
				var first time.Duration
				done, err := c.Ask(runCtx, m, func([]byte) error {
					if first == 0 {
						first = time.Since(t0)
					}
					return nil
				})
				lat := time.Since(t0)
				var perr *sp.Error
				mu.Lock()
				switch {
				case err == nil:
					rep.Requests++
					rep.Tokens += int64(done.Tokens)
					ttfts = append(ttfts, first)
					latencies = append(latencies, lat)
				case runEnded(runCtx, err): // the run ended mid-request: not the daemon's error
				case errors.As(err, &perr):
					rep.Errors[perr.Code.String()]++
				default:
					kind := transportError(err)
					if rep.Errors[kind] == 0 { // the first of each kind, for the operator
						fmt.Fprintf(o.log, "bench: %s: %s: %v\n", sc.name, kind, err)
					}
					rep.Errors[kind]++
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
	rep.Latencyp50, rep.Latencyp95, rep.Latencyp99 = pct(latencies, 50), pct(latencies, 95), pct(latencies, 99)
	rep.Latencies, rep.TTFTs = millis(latencies), millis(ttfts)
	return rep
}

// runEnded says whether err ended a request because the run's time was up
// (not the daemon's error nor the link's). The device returns its
// context's error as soon as the deadline has passed, which may be before
// the context's own timer has fired and runCtx.Err() says so: such a
// request was counted as a transport error at the end of a run.
func runEnded(runCtx context.Context, err error) bool {
	return runCtx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// transportError names a failure that is not the daemon's ERROR.
func transportError(err error) string {
	switch {
	case errors.Is(err, device.ErrTimeout):
		return "no_answer"
	case errors.Is(err, device.ErrChecksum):
		return "checksum"
	}
	return "transport"
}

func millis(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, v := range d {
		out[i] = float64(v.Microseconds()) / 1000
	}
	return out
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

func writeReports(rep benchReport, jsonOut, mdOut, pngOut string) error {
	write := func(path string, render func(io.Writer) error) error {
		if path == "" {
			return nil
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := render(f); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", path, err)
		}
		return f.Close()
	}
	return errors.Join(
		write(jsonOut, func(w io.Writer) error {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(rep)
		}),
		write(mdOut, func(w io.Writer) error { return writeMarkdown(w, rep, pngOut) }),
		write(pngOut, func(w io.Writer) error { return writeHistogram(w, rep) }),
	)
}

// redactURL hides a password in a broker URL.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return s
}
