// Package soak runs mcpd's fault scenarios (docs/reliability.md): devices
// talk to a real daemon through the impairing UDP proxy (old datagrams
// replayed late among its faults) and serial line of package impair,
// engines die, stall and fail, a thousand hostile sources flood the port,
// and every request's outcome is checked against what the engine produced.
// Its tests run each scenario briefly; `make soak` runs them longer and
// writes the table.
package soak

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Row is one scenario's outcome, a line of the table.
type Row struct {
	Scenario string
	Requests int // asked
	Done     int // ended in DONE with the exact text
	Errors   int // ended in an ERROR from the daemon (text before it a prefix of the engine's)
	Caught   int // DONE whose checksum disagreed: corruption caught end to end, never delivered as good
	Lost     int // no final answer: the device gave up
	Wrong    int // DONE with a text that differs from the engine's: must be 0
	// Duplicated counts engine runs beyond one per request: must be 0.
	Duplicated  int
	Bytes       int64 // exact answer bytes delivered
	Elapsed     time.Duration
	Retransmits int64 // stream chunks the daemon sent again
	// DeviceRetransmits counts the devices' frames sent again on an
	// expired RTO (device.Client.Retransmits).
	DeviceRetransmits int64
	TTFT              []time.Duration
	Codes             map[serialproto.ErrorCode]int // the ERRORs by code
	BusyRetries       int                           // refusals (BUSY, RATE_LIMITED, NO_SESSION) retried
	Note              string
}

// CodeSummary lists the ERRORs by code ("TIMEOUT×3, BACKEND_FAILED×2").
func (r Row) CodeSummary() string {
	codes := slices.Sorted(maps.Keys(r.Codes))
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s×%d", c, r.Codes[c])
	}
	return strings.Join(parts, ", ")
}

// Goodput is exact answer bytes per second.
func (r Row) Goodput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / r.Elapsed.Seconds()
}

// Percentile of the time to first text, over requests that saw text.
func (r Row) Percentile(p float64) time.Duration {
	if len(r.TTFT) == 0 {
		return 0
	}
	s := slices.Clone(r.TTFT)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

// Add merges another device's tally into r.
func (r *Row) Add(o Row) {
	r.Requests += o.Requests
	r.Done += o.Done
	r.Errors += o.Errors
	r.Caught += o.Caught
	r.Lost += o.Lost
	r.Wrong += o.Wrong
	r.Bytes += o.Bytes
	r.TTFT = append(r.TTFT, o.TTFT...)
	r.BusyRetries += o.BusyRetries
	r.DeviceRetransmits += o.DeviceRetransmits
	for c, n := range o.Codes {
		r.count(c, n)
	}
}

func (r *Row) count(c serialproto.ErrorCode, n int) {
	if r.Codes == nil {
		r.Codes = make(map[serialproto.ErrorCode]int)
	}
	r.Codes[c] += n
}

// Table renders rows as the Markdown table of docs/reliability.md.
func Table(rows []Row) string {
	var b strings.Builder
	b.WriteString("| scenario | requests | DONE | ERROR | caught | lost | wrong | duplicated | goodput | retransmits | p99 TTFT | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %s | %d | %s | %s |\n",
			r.Scenario, r.Requests, r.Done, r.Errors, r.Caught, r.Lost, r.Wrong, r.Duplicated,
			formatRate(r.Goodput()), r.Retransmits, formatDur(r.Percentile(0.99)), r.Note)
	}
	return b.String()
}

func formatRate(bps float64) string {
	if bps >= 1024 {
		return fmt.Sprintf("%.1f KiB/s", bps/1024)
	}
	return fmt.Sprintf("%.0f B/s", bps)
}

func formatDur(d time.Duration) string {
	switch {
	case d == 0:
		return "–"
	case d < time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// Outcome classifies one Ask: text is what the device reassembled, want
// what the engine produced for the request.
func Outcome(r *Row, text, want string, err error, ttft time.Duration) {
	r.Requests++
	if ttft > 0 {
		r.TTFT = append(r.TTFT, ttft)
	}
	var perr *serialproto.Error
	switch {
	case err == nil && text == want:
		r.Done++
		r.Bytes += int64(len(text))
	case err == nil:
		r.Wrong++
	case errors.Is(err, device.ErrChecksum):
		r.Caught++
	case errors.As(err, &perr):
		r.Errors++
		r.count(perr.Code, 1)
		if !strings.HasPrefix(want, text) {
			r.Wrong++ // text before an ERROR must still be the engine's
		}
	default:
		r.Lost++
	}
}

// Ask runs one request and returns the text, the time from the first
// attempt to the first text, and the error. A refusal with a retryable
// BUSY or RATE_LIMITED is retried as protocol.md §12 asks of a device —
// after 200 ms × 2ⁿ, jittered, at most 5 s, at most 5 times, and under the
// same seq, so a delayed duplicate of the refused INFER that the daemon
// accepts meanwhile cannot make the prompt run twice. A NO_SESSION (the
// daemon forgot the session: evicted, expired) is answered with HELLO and
// the request repeated, which the daemon never accepted. retries counts
// both.
func Ask(ctx context.Context, c *device.Client, m *serialproto.Infer, retries *int) (string, time.Duration, error) {
	var text strings.Builder
	start := time.Now()
	var ttft time.Duration
	onText := func(b []byte) error {
		if ttft == 0 {
			ttft = time.Since(start)
		}
		text.Write(b)
		return nil
	}
	for attempt := 0; ; attempt++ {
		_, retried, err := c.AskRetrying(ctx, m, onText, 5)
		if retries != nil {
			*retries += retried
		}
		var perr *serialproto.Error
		if attempt < 5 && text.Len() == 0 && errors.As(err, &perr) && perr.Code == serialproto.CodeNoSession {
			if retries != nil {
				*retries++
			}
			if err := c.Hello(ctx); err != nil {
				return "", 0, err
			}
			continue
		}
		return text.String(), ttft, err
	}
}

// Fault is what an Echo engine does to a request.
type Fault int

const (
	FaultNone  Fault = iota
	FaultDie         // returns ErrFailed after some tokens, as a crashed runner
	FaultStall       // stops emitting after some tokens until the request's context ends
	FaultError       // fails before the first token (ErrUnavailable)
)

// Echo is a deterministic engine: it answers "echo: " + the last user
// message, one word per token. Faults picks a fault per prompt. It counts
// how often each prompt ran, so a scenario can prove no request ran twice.
type Echo struct {
	Delay  time.Duration             // per token
	Faults func(prompt string) Fault // nil: none
	After  int                       // tokens before a mid-stream fault (default 3)

	mu   sync.Mutex
	runs map[string]int
	n    atomic.Int64
}

// AnswerFor is Echo's answer to prompt.
func AnswerFor(prompt string) string { return "echo: " + prompt }

// Prefix is what Echo emits of prompt's answer before a mid-stream fault.
func (e *Echo) Prefix(prompt string) string {
	words := strings.SplitAfter(AnswerFor(prompt), " ")
	return strings.Join(words[:min(e.after(), len(words))], "")
}

func (e *Echo) after() int {
	if e.After > 0 {
		return e.After
	}
	return 3
}

func (e *Echo) Name() string { return "echo" }

func (e *Echo) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	prompt := req.Messages[len(req.Messages)-1].Content
	e.n.Add(1)
	e.mu.Lock()
	if e.runs == nil {
		e.runs = make(map[string]int)
	}
	e.runs[prompt]++
	e.mu.Unlock()
	fault := FaultNone
	if e.Faults != nil {
		fault = e.Faults(prompt)
	}
	if fault == FaultError {
		return backends.Result{}, fmt.Errorf("%w: engine not reachable", backends.ErrUnavailable)
	}
	start := time.Now()
	var res backends.Result
	for i, w := range strings.SplitAfter(AnswerFor(prompt), " ") {
		if req.Options.MaxTokens > 0 && i >= req.Options.MaxTokens {
			res.Stop = backends.StopLength
			break
		}
		if i == e.after() {
			switch fault {
			case FaultDie:
				return res, fmt.Errorf("%w: engine died", backends.ErrFailed)
			case FaultStall:
				<-ctx.Done()
				return res, ctx.Err()
			}
		}
		if e.Delay > 0 {
			select {
			case <-time.After(e.Delay):
			case <-ctx.Done():
				return res, ctx.Err()
			}
		}
		if err := emit([]byte(w)); err != nil {
			return res, err
		}
		if i == 0 {
			res.TTFT = time.Since(start)
		}
		res.Tokens++
	}
	res.Duration = time.Since(start)
	return res, nil
}

func (e *Echo) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "echo"}, nil
}
func (e *Echo) Healthy(context.Context) error { return nil }
func (e *Echo) Close() error                  { return nil }

// Runs is how many times the engine ran in all.
func (e *Echo) Runs() int64 { return e.n.Load() }

// Duplicated counts runs beyond the first of each prompt.
func (e *Echo) Duplicated() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.runs {
		n += max(c-1, 0)
	}
	return n
}

// Recorder wraps a backend to count runs per prompt, for engines (llama.cpp,
// Ollama) that do not count themselves.
type Recorder struct {
	backends.Backend
	mu   sync.Mutex
	runs map[string]int
}

func (r *Recorder) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	r.mu.Lock()
	if r.runs == nil {
		r.runs = make(map[string]int)
	}
	r.runs[req.Messages[len(req.Messages)-1].Content]++
	r.mu.Unlock()
	return r.Backend.Generate(ctx, req, emit)
}

// Duplicated counts runs beyond the first of each prompt.
func (r *Recorder) Duplicated() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.runs {
		n += max(c-1, 0)
	}
	return n
}
