package daemon

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// request is one accepted INFER.
type request struct {
	s             *session
	seq           uint8
	fragments     int
	infer         *serialproto.Infer
	ticket        *ticket // what admission gave it: places, budget
	ctx           context.Context
	cancelCause   context.CancelCauseFunc
	cancelTimeout context.CancelFunc
	st            *stream
	obs           RequestObserver    // nil when nothing observes
	schema        *Schema            // the answer's constraint (§11.4.1), nil for none
	calls         *toolCalls         // TOOLS_ON: the device's tools and the call outstanding (§16); nil: none
	toolTurns     []backends.Message // the calls made and their results, in order: kept in the history with the answer
	ended         atomic.Bool        // its stream ended: delivered, given up or stopped
}

func (r *request) cancel(cause error) { r.cancelCause(cause) }

// run waits for an engine slot, generates, and streams the answer; every
// accepted request ends in exactly one final chunk (DONE or ERROR).
func (r *request) run() {
	d := r.s.d
	d.admission.deliveryStarted()
	defer d.admission.deliveryEnded()
	defer r.ticket.release() // whatever the device's ACK or the engine's end has not given back
	defer r.cancelCause(nil) // release the context (a no-op if already cancelled)
	defer r.cancelTimeout()
	sent := make(chan error, 1)
	go func() {
		err := r.st.run(r.s.ctx)
		if err != nil {
			r.cancel(err) // the device is gone: stop the engine now, not at the deadline
		}
		sent <- err
	}()

	var answer strings.Builder
	res, err := r.generate(&answer)
	// The engine's work is done: the queue place is free now, not when a
	// slow device has acknowledged the last chunk, so one device's next
	// request never waits on (or counts twice against) the queue bound.
	r.ticket.generated(res.Tokens)
	// Account before the final chunk exists: the device may send its next
	// INFER the moment it sees DONE, and that one must see this turn.
	var code serialproto.ErrorCode
	if err != nil {
		code = errorCode(err, context.Cause(r.ctx))
	} else {
		r.s.remember(r.infer.Prompt, r.toolTurns, answer.String(), res.Generated)
	}
	d.stats.ended(r.s.peer.LinkName(), err, code, errors.Is(context.Cause(r.ctx), errCancelledByDevice))
	if r.obs != nil {
		r.obs.Generated(res, err, code)
	}
	r.st.finish(r.final(res, err))
	err = <-sent
	r.ended.Store(true)
	if err != nil {
		d.remoteLog(slog.LevelInfo, "stream ended early", "device", r.s.deviceID, "seq", r.seq, "err", err)
	}
	if r.obs != nil {
		r.obs.Delivered(err)
	}
}

func (r *request) generate(answer *strings.Builder) (backends.Result, error) {
	d := r.s.d
	// The conversation is read once the slot is taken: an earlier request
	// of the session that held it up has added its turn by then.
	run := func(extra []backends.Message, choice backends.ToolChoice) (backends.Result, error) {
		request := func() backends.Request {
			req := backends.Request{Model: r.infer.Model, Messages: append(r.s.conversation(r.infer), extra...), Options: options(r.infer, d.conf())}
			if r.schema != nil {
				req.Options.Grammar, req.Options.Schema = r.schema.Grammar, r.schema.JSON
			}
			if r.calls != nil {
				req.Tools, req.ToolChoice = r.calls.set.tools, choice
			}
			return req
		}
		// The engine's turn is the source's (an IP address, a serial port):
		// device ids are free to choose, so one host asking under many ids is
		// still one turn.
		return d.generate(r.ctx, "source:"+r.s.source, request, r.s.dropOldTurns, r.obs, func(piece []byte) error {
			answer.Write(piece)
			return r.st.write(piece)
		})
	}
	if r.calls == nil {
		return run(nil, backends.ToolAuto)
	}
	return r.generateWithTools(run)
}

// generate waits for an engine slot — its turn among the holders waiting,
// holder naming a device id or a local client (fair.go) —, then runs the
// request that request builds: the one way to the engine for devices' and
// local requests alike, watched by the liveness check and the request's
// observer (obs may be nil). When the engine finds the prompt too long for
// its context before any output and shrink (may be nil) drops old turns
// of the conversation, the request is built and run again, in the
// same slot (docs/protocol.md §10).
func (d *Daemon) generate(ctx context.Context, holder string, request func() backends.Request, shrink func() bool, obs RequestObserver, emit backends.Emit) (backends.Result, error) {
	release, err := d.admission.slot(ctx, holder)
	if err != nil {
		return backends.Result{}, err
	}
	defer release()
	e := d.acquireEngine()
	defer e.release()
	call := d.live.begin()
	defer d.live.end(call)
	if obs != nil {
		obs.Generating(e.b.Name())
	}
	emitted := false
	run := func() (backends.Result, error) {
		return e.b.Generate(ctx, request(), func(piece []byte) error {
			emitted = true
			call.step()
			if obs != nil {
				obs.Token(len(piece))
			}
			return emit(piece)
		})
	}
	res, err := run()
	for errors.Is(err, backends.ErrPromptTooLong) && !emitted && shrink != nil && ctx.Err() == nil && shrink() {
		d.stats.HistoryTrimmed.Add(1)
		res, err = run()
	}
	d.stats.generated(e.b.Name(), res.Tokens)
	if err == nil && ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	return res, err
}

// final builds the stream's last chunk from the outcome.
func (r *request) final(res backends.Result, err error) finalFunc {
	if err == nil {
		return func(chunk uint16, n, crc uint32) serialproto.Message {
			return &serialproto.Done{
				Chunk: chunk, Reason: stopReason(res.Stop),
				Tokens: uint32(res.Tokens), PromptTokens: uint32(res.PromptTokens),
				TTFTMS: uint32(res.TTFT.Milliseconds()), DurationMS: uint32(res.Duration.Milliseconds()),
				TextBytes: n, TextCRC32C: crc,
			}
		}
	}
	code := errorCode(err, context.Cause(r.ctx))
	text := deviceText(err)
	return func(chunk uint16, _, _ uint32) serialproto.Message {
		e := serialproto.NewError(code, text)
		e.Flags |= serialproto.ErrorFlagStream
		e.Chunk = chunk
		return e
	}
}

func stopReason(s backends.StopReason) uint8 {
	switch s {
	case backends.StopLength:
		return serialproto.StopLength
	case backends.StopContext:
		return serialproto.StopContext
	}
	return serialproto.StopEOS
}

// errorCode maps an engine error, or the reason the request's context
// ended, to a protocol error code (docs/protocol.md §12).
func errorCode(err, cause error) serialproto.ErrorCode {
	switch {
	case errors.Is(cause, errCancelledByDevice), errors.Is(cause, errSessionClosed), errors.Is(cause, errSuperseded):
		return serialproto.CodeCancelled
	case errors.Is(cause, errShuttingDown):
		return serialproto.CodeShuttingDown
	case errors.Is(err, errToolTimeout):
		return serialproto.CodeToolTimeout
	case errors.Is(err, errToolLimit), errors.Is(err, errToolResultTooLarge):
		return serialproto.CodeToolLimit
	case errors.Is(cause, context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return serialproto.CodeTimeout
	case errors.Is(err, backends.ErrModelNotFound):
		return serialproto.CodeModelNotFound
	case errors.Is(err, backends.ErrUnavailable), errors.Is(err, backends.ErrClosed):
		return serialproto.CodeBackendUnavailable
	case errors.Is(err, backends.ErrBusy):
		return serialproto.CodeBusy
	case errors.Is(err, backends.ErrPromptTooLong):
		return serialproto.CodeTooLarge
	case errors.Is(err, backends.ErrUnsupported):
		return serialproto.CodeUnsupportedOption
	}
	return serialproto.CodeBackendFailed
}

// options maps INFER options to the engine's.
func options(m *serialproto.Infer, cfg *Config) backends.Options {
	o := backends.Options{MaxTokens: maxTokens(m, cfg)}
	milli := func(v uint16) float32 { return float32(v) / 1000 }
	if m.Set.Has(serialproto.OptTemperature) {
		o.Temperature, o.TemperatureSet = milli(m.Temperature), true
	}
	if m.Set.Has(serialproto.OptSeed) {
		o.Seed, o.SeedSet = m.Seed, true
	}
	if m.Set.Has(serialproto.OptTopK) {
		o.TopK = int(m.TopK)
	}
	if m.Set.Has(serialproto.OptTopP) {
		o.TopP = milli(m.TopP)
	}
	if m.Set.Has(serialproto.OptMinP) {
		o.MinP = milli(m.MinP)
	}
	if m.Set.Has(serialproto.OptRepeatPenalty) {
		o.RepeatPenalty = milli(m.RepeatPenalty)
	}
	if m.Set.Has(serialproto.OptContext) {
		o.ContextSize = int(min(m.Context, uint32(cfg.MaxContext)))
	}
	return o
}

// deviceText is an error's text for an ERROR frame: at most 64 bytes
// reach a device, so the Go package prefixes of the chain ("backends: ",
// "llamacpp: ") go and the cause and its figures stay ("prompt exceeds the
// context: 5033 prompt tokens, context 2048").
func deviceText(err error) string {
	text := err.Error()
	for _, p := range []string{"backends: ", "daemon: ", "llamacpp: ", "ollama: ", "native: ", "serialproto: ", "grammar: "} {
		text = strings.ReplaceAll(text, p, "")
	}
	return text
}
