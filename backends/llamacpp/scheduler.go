package llamacpp

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native"
)

// slot is one sequence of the shared context.
type slot struct {
	seq     int
	req     *request
	sampler *native.Sampler
	prefill int          // prompt tokens already decoded (or reused)
	pos     int          // next position
	next    native.Token // sampled, to be decoded next step
	hasNext bool
	emitted int
	out     int            // batch index of this slot's logits in the current step; -1 none
	adding  []native.Token // this step's tokens, held once the decode succeeds
}

// run is the scheduler: the only goroutine that touches e.nctx.
func (e *Engine) run() {
	defer close(e.done)
	slots := make([]*slot, e.cfg.Parallel)
	kv := e.kv // loaded from the warm file, saved to it after (warm.go)
	clear := func(seq int) {
		if err := e.nctx.ClearSequence(seq); err != nil {
			e.cfg.Logger.Warn("clearing a sequence failed", "seq", seq, "err", err)
		}
		kv.held[seq] = kv.held[seq][:0]
	}
	// end ends a request, clearing its sequence's cache when asked to. The
	// request hears of its end last, after the budget and the KV figures
	// account for it: whoever reads KVStats once Generate returns sees
	// them settled.
	end := func(i int, ev event, clearCache bool) {
		s := slots[i]
		s.sampler.Close()
		kv.used[i] = e.steps.Load()
		if clearCache || e.cfg.NoKVReuse {
			clear(i)
		}
		slots[i] = nil
		e.keepBudget(kv, slots, -1)
		s.req.push(ev)
	}
	// free ends a request. Its sequence keeps its KV cache (kv.held says
	// what it holds) for the conversation's next turn, or for another
	// request that starts the same way.
	free := func(i int, ev event) { end(i, ev, false) }
	// failed ends a request whose sequence's cache a failed decode left
	// undefined.
	failed := func(i int, ev event) { end(i, ev, true) }
	// Decodes are aborted by Close, not by any one request.
	life, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		select {
		case <-e.closing:
			stop()
		case <-life.Done():
		}
	}()
	defer func() {
		for i, s := range slots {
			if s != nil {
				free(i, event{done: true, err: backends.ErrClosed})
			}
		}
		for {
			select {
			case r := <-e.queue:
				r.push(event{done: true, err: backends.ErrClosed})
			default:
				return
			}
		}
	}()
	var batch native.Batch
	rr := 0          // round-robin start for prompt chunks
	decoded := false // since the workers were last told to sleep
	// The last step's times, kept while some request fills a Timeline.
	var stepStart, stepEnd time.Time
	stepTokens := 0
	for {
		select {
		case <-e.closing:
			return
		case f := <-e.ctl: // SaveWarm's copy, between two steps
			f(kv, slots)
		default:
		}
		// Admit waiting requests into free sequences.
		for i := range slots {
			if slots[i] != nil {
				continue
			}
			var r *request
			select {
			case r = <-e.queue:
			default:
			}
			if r == nil {
				break
			}
			if r.ctx.Err() != nil {
				continue
			}
			smp, err := native.NewSampler(r.sampling)
			if err != nil {
				r.push(event{done: true, err: fmt.Errorf("%w: %w", backends.ErrFailed, err)})
				continue
			}
			if r.sampling.RepeatPenalty != 1 {
				for _, t := range r.prompt {
					smp.Accept(t)
				}
			}
			seq, reuse := e.place(kv, slots, r.prompt)
			r.cached.Store(int64(reuse))
			e.promptTokens.Add(int64(len(r.prompt)))
			e.promptCached.Add(int64(reuse))
			slots[seq] = &slot{seq: seq, req: r, sampler: smp, prefill: reuse, pos: reuse}
			if tl := r.tl; tl != nil {
				tl.Admitted = time.Now()
				tl.PrevStepStart, tl.PrevStepEnd, tl.PrevStepTokens = stepStart, stepEnd, stepTokens
				tl.Prompt, tl.Reused = len(r.prompt), reuse
				for _, o := range slots {
					if o != nil && o.seq != seq {
						tl.Running++
					}
				}
			}
		}
		// Drop sequences whose caller left (cancelled, stop string, emit error).
		for i, s := range slots {
			if s != nil && s.req.ctx.Err() != nil {
				free(i, event{done: true, err: s.req.ctx.Err()})
			}
		}
		if e.cfg.beforeStep != nil {
			e.cfg.beforeStep(func() int {
				n := 0
				for _, s := range slots {
					if s != nil {
						n += s.req.backlog()
					}
				}
				return n
			})
		}
		// Build one step: each generating sequence's next token, then
		// prompt chunks round-robin in the room left — or, when new
		// requests are a short prompt away from their first token, those
		// prompts alone (firstTokensFirst).
		batch.Reset()
		newcomersOnly := e.firstTokensFirst(slots)
		for _, s := range slots {
			if s == nil {
				continue
			}
			s.out = -1
			s.adding = s.adding[:0]
			if s.hasNext && s.req.backlog() < maxBacklog && !newcomersOnly {
				s.out = batch.Len()
				batch.Add(s.next, s.pos, s.seq, true)
				s.adding = append(s.adding, s.next)
			}
		}
		for k := range slots {
			s := slots[(rr+k)%len(slots)]
			room := e.cfg.BatchSize - batch.Len()
			if s == nil || s.hasNext || s.prefill >= len(s.req.prompt) || room == 0 {
				continue
			}
			n := min(len(s.req.prompt)-s.prefill, e.cfg.PromptChunk, room)
			for j := range n {
				last := s.prefill+j == len(s.req.prompt)-1
				if last {
					s.out = batch.Len()
				}
				batch.Add(s.req.prompt[s.prefill+j], s.prefill+j, s.seq, last)
			}
			s.adding = append(s.adding, s.req.prompt[s.prefill:s.prefill+n]...)
			if s.req.tl != nil {
				s.req.tl.PrefillSteps++
			}
			s.prefill += n
			s.pos = s.prefill
		}
		rr++
		if batch.Len() == 0 {
			// Idle, or every sequence waits on a slow caller. ggml's
			// workers would poll for the next decode for a while,
			// holding a core that the callers (or anything else) need.
			if decoded {
				e.nctx.Idle()
				decoded = false
			}
			select {
			case <-e.closing:
				return
			case <-e.wake:
			}
			continue
		}
		outputs := 0
		for _, s := range slots {
			if s != nil && s.out >= 0 {
				outputs++
			}
		}
		decoded = true
		e.steps.Add(1)
		e.stepTokens.Add(int64(batch.Len()))
		e.stepOutputs.Add(int64(outputs))
		trace := e.tracing.Load() > 0
		if trace {
			stepStart, stepTokens = time.Now(), batch.Len()
		}
		err := e.nctx.Decode(life, &batch)
		if trace {
			stepEnd = time.Now()
		}
		if err != nil {
			if life.Err() != nil {
				return
			}
			// A failed step leaves its sequences' caches undefined.
			e.cfg.Logger.Error("llama_decode failed", "tokens", batch.Len(), "err", err)
			for i, s := range slots {
				if s != nil && len(s.adding) > 0 {
					failed(i, event{done: true, err: fmt.Errorf("%w: %w", backends.ErrFailed, err)})
				}
			}
			continue
		}
		for _, s := range slots {
			if s != nil {
				kv.held[s.seq] = append(kv.held[s.seq], s.adding...)
			}
		}
		for i, s := range slots {
			if s == nil || s.out < 0 {
				continue
			}
			if s.hasNext {
				s.pos++
				s.hasNext = false
			}
			tok, err := s.sampler.Sample(e.nctx, s.out)
			if err != nil {
				free(i, event{done: true, err: fmt.Errorf("%w: %w", backends.ErrFailed, err)})
				continue
			}
			if eog, _ := e.model.IsEOG(tok); eog {
				free(i, event{done: true, stop: backends.StopEOS})
				continue
			}
			if tl := s.req.tl; tl != nil && s.emitted == 0 {
				tl.FirstStepStart, tl.FirstStepEnd = stepStart, stepEnd
				tl.FirstStepTokens, tl.FirstStepSeqs = batch.Len(), outputs
			}
			s.req.push(event{tok: tok})
			s.emitted++
			switch {
			case s.emitted >= s.req.maxTokens:
				free(i, event{done: true, stop: s.req.atMax})
			case s.pos >= e.seqCtx:
				free(i, event{done: true, stop: backends.StopContext})
			default:
				s.next, s.hasNext = tok, true
			}
		}
		// Yield once per step. The callers' goroutines this step woke then
		// take their tokens now, on this thread, between decodes instead
		// of on a core ggml's workers are using; and this goroutine's
		// schedtick advances. Going from cgo call to cgo call without
		// ever yielding, it looks to sysmon like one goroutine running
		// for over 10 ms: sysmon then takes its P in the middle of a
		// decode, hands it to another thread and goes back to waking
		// every 20 µs, each wake-up preempting a ggml thread that the
		// other then waits for at a barrier. Measured: context switches
		// per generated token 25 → 6, gen-tok/s +1 to +9 % (4 paired
		// runs of BenchmarkNativeGenerate, median +4 %).
		runtime.Gosched()
	}
}

// firstTokens is the most prompt tokens that a step given to new requests
// alone may carry (firstTokensFirst). A step's time grows with its tokens
// (on 2 cores 8 tokens cost ~3.7 steps of one): 32 bounds the pause it
// makes in the running streams to what a step with all of them costs.
const firstTokens = 32

// firstTokensFirst says whether the next step carries only the prompts of
// new requests, the generating sequences sitting it out: when some
// sequences generate and the new ones need at most firstTokens prompt
// tokens in all for their first tokens (a prompt found in the KV cache
// needs one), and no more tokens than the generating sequences would add.
// A request that arrives while a step of n sequences runs waits for it,
// and joining the next step of n+1 would wait that long again; a step of
// its prompt alone costs about one token's step, so its first token comes
// about one batched step sooner. The running streams lose that short step
// once per admission. When more new tokens are due than sequences run
// (seven devices asking again at once beside one), their own step would
// cost nearly what the merged one does — on 2 cores a step of 7 tokens
// even took longer than one of 8 (docs/native.md) — so they merge. Outputs
// do not change: a sequence that sits out a step decodes the same tokens
// one step later.
func (e *Engine) firstTokensFirst(slots []*slot) bool {
	if e.cfg.mergeFirstTokens != nil && e.cfg.mergeFirstTokens() {
		return false
	}
	pending, running := 0, 0
	for _, s := range slots {
		switch {
		case s == nil:
		case s.hasNext:
			if s.req.backlog() < maxBacklog {
				running++
			}
		case s.prefill < len(s.req.prompt):
			pending += len(s.req.prompt) - s.prefill
		}
	}
	return pending > 0 && pending <= min(running, firstTokens)
}
