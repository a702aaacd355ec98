package ollama

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/ollama/ollama/api"
)

// errStalled and errNoFirstToken are the causes the phase timers cancel an
// attempt with.
var (
	errNoFirstToken = errors.New("no first token in time")
	errStalled      = errors.New("no token in time")
)

// emitError marks an error returned by the caller's emit: it ends the
// request as it is, with no retry and no blame on the endpoint.
type emitError struct{ err error }

func (e emitError) Error() string { return e.err.Error() }
func (e emitError) Unwrap() error { return e.err }

// Generate implements Backend: a streaming /api/chat on the endpoint with
// the fewest requests in flight among the healthy ones. While no output has
// reached emit, failures are retried with backoff (on another endpoint
// when there is one); after that, a failure ends the request with an error
// that unwraps to ErrFailed — never a success with made-up statistics.
func (o *Engine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	start := time.Now()
	select {
	case <-o.closing:
		return backends.Result{}, backends.ErrClosed
	default:
	}
	if len(req.Messages) == 0 {
		return backends.Result{}, fmt.Errorf("%w: no messages", backends.ErrFailed)
	}
	if o.cfg.TotalTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.cfg.TotalTimeout)
		defer cancel()
	}
	model := req.Model
	if model == "" {
		model = o.cfg.Model
	}
	if req.Options.Grammar != "" && len(req.Options.Schema) == 0 {
		return backends.Result{}, fmt.Errorf("%w: Ollama takes a JSON Schema, not a GBNF grammar", backends.ErrUnsupported)
	}
	chat, err := o.chatRequest(model, req)
	if err != nil {
		return backends.Result{}, err
	}
	var (
		res     backends.Result
		lastErr error
		tried   = make(map[*endpoint]int, len(o.endpoints))
	)
	for attempt := 0; ; attempt++ {
		ep, err := o.pick(model, tried)
		if err != nil {
			if lastErr != nil {
				return res, lastErr
			}
			return res, err
		}
		tried[ep]++
		err = o.attempt(ctx, ep, chat, start, &res, emit)
		if err == nil {
			return res, nil
		}
		lastErr = err
		var oe *Error
		if !errors.As(err, &oe) || res.TTFT > 0 || !oe.retryable() || ctx.Err() != nil {
			return res, err
		}
		if oe.Kind == FailModelMissing {
			// Not a retry: another endpoint may have the model.
			if attempt--; len(tried) == len(o.endpoints) {
				return res, err
			}
			continue
		}
		if attempt >= o.cfg.Retries {
			return res, err
		}
		if err := sleepCtx(ctx, o.backoff(attempt)); err != nil {
			return res, lastErr
		}
		o.log.Info("retrying on Ollama", "model", model, "attempt", attempt+2, "after", err)
	}
}

// backoff is full jitter over an exponential: uniform in [0, base·2ⁿ],
// at most 2s, so retries from many devices do not arrive in step.
func (o *Engine) backoff(attempt int) time.Duration {
	ceil := min(o.cfg.RetryBackoff<<min(attempt, 10), 2*time.Second)
	return time.Duration(rand.Int64N(int64(ceil)) + 1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pick chooses the endpoint for the next attempt: breaker closed before
// half-open, then one not tried yet for this request, then the fewest
// requests in flight, then configured order. The model must not be known
// missing there.
func (o *Engine) pick(model string, tried map[*endpoint]int) (*endpoint, error) {
	now := time.Now()
	type cand struct {
		ep    *endpoint
		rank  int
		tries int
		load  int64
	}
	cands := make([]cand, 0, len(o.endpoints))
	missing := 0
	for _, ep := range o.endpoints {
		if ep.presenceOf(model) == PresenceMissing {
			missing++
			continue
		}
		if !ep.breaker.ready(now) {
			continue
		}
		st, _, _ := ep.breaker.snapshot()
		rank := 0
		if st != BreakerClosed {
			rank = 1
		}
		cands = append(cands, cand{ep, rank, tried[ep], ep.inFlight.Load()})
	}
	// A handful of endpoints: insertion order plus a stable selection.
	for len(cands) > 0 {
		best := 0
		for i, c := range cands[1:] {
			b := cands[best]
			if c.rank < b.rank || c.rank == b.rank && (c.tries < b.tries || c.tries == b.tries && c.load < b.load) {
				best = i + 1
			}
		}
		if cands[best].ep.breaker.allow(now) {
			return cands[best].ep, nil
		}
		cands = append(cands[:best], cands[best+1:]...)
	}
	if missing == len(o.endpoints) {
		return nil, fmt.Errorf("%w: model %q is not on any Ollama endpoint (ollama pull %s)", backends.ErrModelNotFound, model, model)
	}
	return nil, fmt.Errorf("%w: no Ollama endpoint available (breakers open)", backends.ErrUnavailable)
}

func (o *Engine) chatRequest(model string, req backends.Request) (*api.ChatRequest, error) {
	msgs := make([]api.Message, len(req.Messages))
	for i, m := range req.Messages {
		var prev *backends.Message
		if i > 0 {
			prev = &req.Messages[i-1]
		}
		var err error
		if msgs[i], err = chatMessage(m, prev); err != nil {
			return nil, err
		}
	}
	opts := map[string]any{}
	op := req.Options
	if op.MaxTokens > 0 {
		opts["num_predict"] = op.MaxTokens
	}
	if op.TemperatureSet {
		opts["temperature"] = op.Temperature
	}
	if op.SeedSet {
		opts["seed"] = int(op.Seed)
	}
	if op.TopK > 0 {
		opts["top_k"] = op.TopK
	}
	if op.TopP > 0 {
		opts["top_p"] = op.TopP
	}
	if op.MinP > 0 {
		opts["min_p"] = op.MinP
	}
	if op.RepeatPenalty > 0 {
		opts["repeat_penalty"] = op.RepeatPenalty
	}
	if len(op.Stop) > 0 {
		opts["stop"] = op.Stop
	}
	if op.ContextSize > 0 {
		opts["num_ctx"] = op.ContextSize
	}
	stream := true
	cr := &api.ChatRequest{Model: model, Messages: msgs, Stream: &stream, Options: opts}
	if len(op.Schema) > 0 {
		// Ollama constrains the answer to the schema (its own grammar
		// sampler underneath).
		cr.Format = op.Schema
	}
	if o.cfg.KeepAlive != nil {
		cr.KeepAlive = &api.Duration{Duration: *o.cfg.KeepAlive}
	}
	if len(req.Tools) > 0 {
		var err error
		if cr.Tools, err = chatTools(req.Tools); err != nil {
			return nil, err
		}
	}
	return cr, nil
}

// attempt runs one streaming chat on ep. The phase timers cancel the
// attempt's context with a cause that says which phase ran out.
func (o *Engine) attempt(ctx context.Context, ep *endpoint, chat *api.ChatRequest, start time.Time, res *backends.Result, emit backends.Emit) error {
	ep.inFlight.Add(1)
	ep.requests.Add(1)
	ep.used()
	defer ep.inFlight.Add(-1)
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// One timer for both phases. It first bounds the wait for the first
	// line; from then on it fires at most once per TokenTimeout and checks
	// the time of the latest line, re-arming itself for the rest of the
	// gap. Lines only store a timestamp: resetting a timer per token costs
	// more than the rest of our per-token work (BenchmarkOllamaOverhead).
	var lastLine atomic.Int64 // UnixNano of the latest line; 0: none yet
	var watchdog atomic.Pointer[time.Timer]
	watchdog.Store(time.AfterFunc(o.cfg.FirstTokenTimeout, func() {
		last := lastLine.Load()
		if last == 0 {
			cancel(errNoFirstToken)
			return
		}
		idle := time.Since(time.Unix(0, last))
		if idle >= o.cfg.TokenTimeout {
			cancel(errStalled)
			return
		}
		watchdog.Load().Reset(o.cfg.TokenTimeout - idle)
	}))
	defer func() { watchdog.Load().Stop() }()
	lines, pieces := 0, 0
	done := false
	err := ep.client.Chat(actx, chat, func(r api.ChatResponse) error {
		now := time.Now()
		lastLine.Store(now.UnixNano())
		if lines == 0 {
			watchdog.Load().Reset(o.cfg.TokenTimeout) // the gap phase starts
		}
		lines++
		if c := r.Message.Content; c != "" {
			if res.TTFT == 0 {
				res.TTFT = max(now.Sub(start), 1) // non-zero: output reached the caller
			}
			res.Duration = now.Sub(start)
			pieces++
			if err := emit([]byte(c)); err != nil {
				return emitError{err}
			}
		}
		if len(r.Message.ToolCalls) > 0 && res.Call == nil {
			call, err := toolCall(chat.Tools, r.Message.ToolCalls)
			if err != nil {
				return emitError{err}
			}
			res.Call = call
		}
		if r.Done {
			done = true
			res.Tokens, res.PromptTokens = r.EvalCount, r.PromptEvalCount
			res.Stop = backends.StopEOS
			if r.DoneReason == "length" {
				res.Stop = backends.StopLength
			}
			if res.Duration == 0 {
				res.Duration = time.Since(start)
			}
		}
		return nil
	})
	var ee emitError
	switch {
	case errors.As(err, &ee):
		o.settle(ep, nil, true)
		return ee.err
	case err == nil && done:
		o.settle(ep, nil, false)
		if ep.setPresence(chat.Model, PresencePresent) {
			o.healthChanged()
		}
		return nil
	case ctx.Err() != nil: // the caller gave up: not the endpoint's fault
		ep.breaker.release()
		return ctx.Err()
	}
	cause := context.Cause(actx)
	var oe *Error
	switch {
	case errors.Is(cause, errNoFirstToken):
		oe = &Error{Endpoint: ep.url, Kind: FailFirstToken, Err: fmt.Errorf("nothing within %v", o.cfg.FirstTokenTimeout)}
	case errors.Is(cause, errStalled):
		oe = &Error{Endpoint: ep.url, Kind: FailStall, Err: fmt.Errorf("no token for %v", o.cfg.TokenTimeout)}
	case err == nil: // the body ended without the done object
		oe = &Error{Endpoint: ep.url, Kind: FailCut, Err: errors.New("the stream ended without Ollama's final done object")}
	default:
		oe = o.classify(ep, err, pieces, lines > 0)
	}
	oe.Pieces = pieces
	if oe.Kind == FailModelMissing && ep.setPresence(chat.Model, PresenceMissing) {
		o.healthChanged()
	}
	o.settle(ep, oe, false)
	if pieces > 0 {
		o.log.Warn("ollama stream failed after output", "endpoint", ep.url, "pieces", pieces, "err", oe)
	}
	return oe
}

// settle reports an attempt's outcome to the endpoint's breaker.
func (o *Engine) settle(ep *endpoint, oe *Error, neutral bool) {
	switch {
	case neutral:
		ep.breaker.release()
	case oe == nil:
		ep.breaker.success()
	case oe.countsAgainst():
		ep.mu.Lock()
		ep.lastError = oe.Error()
		ep.mu.Unlock()
		ep.breaker.failure(time.Now())
	default:
		ep.mu.Lock()
		ep.lastError = oe.Error()
		ep.mu.Unlock()
		ep.breaker.success() // it answered sensibly
	}
}

// classify turns a client error into an Error. streamed says
// whether lines had arrived (a read error then is a cut).
func (o *Engine) classify(ep *endpoint, err error, pieces int, streamed bool) *Error {
	oe := &Error{Endpoint: ep.url, Pieces: pieces, Err: err}
	var se api.StatusError
	var opErr *net.OpError
	switch {
	case errors.As(err, &se):
		oe.Status = se.StatusCode
		oe.Err = errors.New(se.ErrorMessage)
		switch {
		case se.StatusCode == http.StatusNotFound:
			oe.Kind = FailModelMissing
		case se.StatusCode == http.StatusServiceUnavailable:
			oe.Kind = FailQueueFull
		case noToolsError(se.ErrorMessage):
			oe.Kind = FailNoTools
		case se.StatusCode >= 500:
			oe.Kind = FailServer
		default:
			oe.Kind = FailRequest
		}
	case errors.As(err, &opErr) && opErr.Op == "dial":
		oe.Kind = FailRefused
		if opErr.Timeout() {
			oe.Kind = FailConnect
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		oe.Kind = FailRefused
	case streamed:
		// An {"error": ...} line after output started, or a read error.
		oe.Kind = FailCut
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		// Before any response: a kept-alive connection the server closed
		// (it restarted) or a reset. A fresh connection may well work.
		oe.Kind = FailConnLost
	default:
		// An error line before any output: the server failed this request.
		oe.Kind = FailServer
	}
	return oe
}
