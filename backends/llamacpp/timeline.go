package llamacpp

import (
	"context"
	"log/slog"
	"time"
)

// Timeline is one request's way through the engine to its first token:
// where a device's time to first token goes inside the engine. The engine
// fills it only when asked — the request's context carries one
// (WithTimeline, for benchmarks) or the engine's logger has debug on (one
// "llama.cpp request timeline" line per request) — so requests pay
// nothing for it otherwise.
type Timeline struct {
	Start  time.Time // Generate was called
	Queued time.Time // tokenized and handed to the scheduler
	// The decode step that ended last before admission: when a request
	// is queued during a step, it waits for that step's end.
	PrevStepStart, PrevStepEnd time.Time
	PrevStepTokens             int
	Admitted                   time.Time // given a sequence, between two steps
	Running                    int       // other requests holding sequences then
	Prompt, Reused             int       // prompt tokens, of which found in the KV cache
	PrefillSteps               int       // steps that carried some of its prompt
	// The step that gave the first token: its start and end, its tokens
	// and the sequences sampled in it.
	FirstStepStart, FirstStepEnd time.Time
	FirstStepTokens              int
	FirstStepSeqs                int
	FirstEmit                    time.Time // the first text went to emit
}

type timelineKey struct{}

// WithTimeline returns a context under which Generate fills tl with the
// request's timeline; tl is complete when Generate returns without error.
func WithTimeline(ctx context.Context, tl *Timeline) context.Context {
	return context.WithValue(ctx, timelineKey{}, tl)
}

// timeline returns the timeline the engine fills for a request under ctx,
// or nil when nobody asked for one.
func (e *Engine) timeline(ctx context.Context) *Timeline {
	if _, ok := ctx.Value(timelineKey{}).(*Timeline); ok || e.cfg.Logger.Enabled(ctx, slog.LevelDebug) {
		return &Timeline{}
	}
	return nil
}

// report hands a complete timeline to whoever asked for it.
func (e *Engine) report(ctx context.Context, tl *Timeline) {
	if tl == nil {
		return
	}
	if dst, ok := ctx.Value(timelineKey{}).(*Timeline); ok {
		*dst = *tl
	}
	if !e.cfg.Logger.Enabled(ctx, slog.LevelDebug) || tl.FirstEmit.IsZero() {
		return
	}
	ms := func(from, to time.Time) float64 {
		if from.IsZero() || to.IsZero() || to.Before(from) {
			return 0
		}
		return float64(to.Sub(from).Microseconds()) / 1000
	}
	// Waiting for the step in progress, then what ran between that step's
	// end and the admission.
	inStep, after := 0.0, ms(tl.Queued, tl.Admitted)
	if tl.PrevStepEnd.After(tl.Queued) {
		inStep, after = ms(tl.Queued, tl.PrevStepEnd), ms(tl.PrevStepEnd, tl.Admitted)
	}
	e.cfg.Logger.Debug("llama.cpp request timeline",
		"ttft_ms", ms(tl.Start, tl.FirstEmit),
		"tokenize_ms", ms(tl.Start, tl.Queued),
		"in_step_ms", inStep, "prev_step_tokens", tl.PrevStepTokens,
		"to_admit_ms", after,
		"running", tl.Running, "prompt", tl.Prompt, "reused", tl.Reused, "prefill_steps", tl.PrefillSteps,
		"to_first_step_ms", ms(tl.Admitted, tl.FirstStepStart),
		"first_step_ms", ms(tl.FirstStepStart, tl.FirstStepEnd),
		"first_step_tokens", tl.FirstStepTokens, "first_step_seqs", tl.FirstStepSeqs,
		"to_emit_ms", ms(tl.FirstStepEnd, tl.FirstEmit))
}
