package llamacpp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native"
)

// event is what the scheduler tells a request: a token, or the end.
type event struct {
	tok  native.Token
	done bool
	stop backends.StopReason
	err  error
}

// request is one Generate call as the scheduler sees it.
type request struct {
	ctx       context.Context // done when the caller gave up
	prompt    []native.Token
	maxTokens int
	atMax     backends.StopReason // the stop reason when maxTokens is reached
	sampling  native.SamplerParams
	cached    atomic.Int64 // prompt tokens found in the KV cache, set at admission
	// tl, when set, is filled by the scheduler up to the first token
	// (timeline.go); the caller reads it after the last event.
	tl *Timeline

	mu     sync.Mutex
	events []event
	notify chan struct{} // cap 1: events were added
}

// maxBacklog is how many undelivered tokens a sequence may run ahead of a
// slow emit before it sits out decode steps (the daemon's pacing reaches
// the engine this way without stalling other sequences).
const maxBacklog = 16

func (r *request) push(ev event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *request) backlog() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func (r *request) take(buf []event) []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	buf = append(buf[:0], r.events...)
	r.events = r.events[:0]
	return buf
}

// generate is Generate without tools (tools.go wraps it).
func (e *Engine) generate(ctx context.Context, req backends.Request, emit backends.Emit) (res backends.Result, err error) {
	start := time.Now()
	tl := e.timeline(ctx)
	if tl != nil {
		tl.Start = start
		e.tracing.Add(1)
		defer func() {
			e.tracing.Add(-1)
			if err == nil {
				e.report(ctx, tl)
			}
		}()
	}
	if err := e.Healthy(ctx); err != nil {
		return res, err
	}
	if req.Model != "" && req.Model != e.cfg.ModelName {
		return res, fmt.Errorf("%w: %q", backends.ErrModelNotFound, req.Model)
	}
	if len(req.Messages) == 0 {
		return res, fmt.Errorf("%w: no messages", backends.ErrFailed)
	}
	prompt, err := e.tokenizePrompt(req.Messages)
	if err != nil {
		return res, err
	}
	limit := e.seqCtx
	if req.Options.ContextSize > 0 {
		limit = min(limit, req.Options.ContextSize)
	}
	// Leave room for at least one generated token.
	if len(prompt)+1 > limit {
		return res, fmt.Errorf("%w: %d prompt tokens, context %d", backends.ErrPromptTooLong, len(prompt), limit)
	}
	maxTokens := e.cfg.MaxTokens
	if req.Options.MaxTokens > 0 {
		maxTokens = req.Options.MaxTokens
	}
	// When the context, not MaxTokens, ends the answer, say so.
	atMax := backends.StopLength
	if maxTokens > limit-len(prompt) {
		maxTokens, atMax = limit-len(prompt), backends.StopContext
	}
	rctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		e.poke() // let the scheduler free our sequence now
	}()
	r := &request{ctx: rctx, prompt: prompt, maxTokens: maxTokens, atMax: atMax, sampling: e.sampling(req.Options),
		notify: make(chan struct{}, 1), tl: tl}
	if tl != nil {
		tl.Queued = time.Now()
	}
	select {
	case e.queue <- r:
		e.poke()
	default:
		return res, fmt.Errorf("%w: %d requests waiting", backends.ErrBusy, cap(e.queue))
	}
	res.PromptTokens = len(prompt)
	out := newTextStream(req.Options.Stop)
	var evs []event
	send := func(piece []byte) error {
		if len(piece) == 0 {
			return nil
		}
		if res.TTFT == 0 {
			res.TTFT = time.Since(start)
			if tl != nil {
				tl.FirstEmit = start.Add(res.TTFT)
			}
		}
		res.Duration = time.Since(start)
		return emit(piece)
	}
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-e.done:
			return res, backends.ErrClosed
		case <-r.notify:
		}
		evs = r.take(evs)
		// Set at admission, before any event.
		res.PromptCached = int(r.cached.Load())
		e.poke() // the backlog shrank: a paused sequence may resume
		for _, ev := range evs {
			if ev.done {
				if ev.err != nil {
					return res, ev.err
				}
				res.Stop = ev.stop
				if err := send(out.flush()); err != nil {
					return res, err
				}
				if res.Duration == 0 {
					res.Duration = time.Since(start)
				}
				return res, nil
			}
			res.Tokens++
			res.Generated = append(res.Generated, int32(ev.tok))
			piece, err := e.model.TokenPiece(ev.tok, false)
			if errors.Is(err, native.ErrClosed) {
				return res, backends.ErrClosed // Close raced with this request
			}
			if err != nil {
				return res, fmt.Errorf("%w: %w", backends.ErrFailed, err)
			}
			text, stopped := out.add(piece)
			if err := send(text); err != nil {
				return res, err
			}
			if stopped {
				res.Stop = backends.StopString
				return res, nil
			}
		}
	}
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// sampling maps request options onto a sampler, filling engine defaults.
func (e *Engine) sampling(o backends.Options) native.SamplerParams {
	p := native.SamplerParams{Temperature: e.cfg.Temperature, TopK: e.cfg.TopK, TopP: e.cfg.TopP,
		MinP: e.cfg.MinP, RepeatPenalty: e.cfg.RepeatPenalty}
	if o.Grammar != "" {
		p.Grammar, p.Model = o.Grammar, e.model
	}
	if o.TemperatureSet {
		p.Temperature = o.Temperature
	}
	if o.TopK > 0 {
		p.TopK = o.TopK
	}
	if o.TopP > 0 {
		p.TopP = o.TopP
	}
	if o.MinP > 0 {
		p.MinP = o.MinP
	}
	if o.RepeatPenalty > 0 {
		p.RepeatPenalty = o.RepeatPenalty
	}
	if o.SeedSet {
		p.Seed = o.Seed
	} else {
		p.Seed = rand.Uint32()
	}
	return p
}
