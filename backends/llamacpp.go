package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/mcpd-project/mcpd/native"
)

// LlamaConfig configures the in-process llama.cpp engine.
type LlamaConfig struct {
	ModelPath string
	// ModelName is the name requests use (default: the file name without
	// .gguf). "" in a request always means this model.
	ModelName string
	// Threads for decoding (default: the CPU count).
	Threads int
	// SequenceContext is the context each sequence gets, in tokens
	// (default: min(training context, 2048)). The KV cache holds
	// Parallel × SequenceContext tokens.
	SequenceContext int
	// Parallel is the most requests decoded together (default 4).
	Parallel int
	// Queue is the most requests waiting for a free sequence (default 32);
	// beyond it Generate returns ErrBusy.
	Queue int
	// BatchSize is the most tokens per llama_decode (default 512).
	BatchSize int
	// PromptChunk is the most prompt tokens one sequence adds to a decode
	// step, so a long prompt cannot stall the others' generation for long
	// (default 128).
	PromptChunk int
	// MaxTokens is the default generation limit (default 256).
	MaxTokens int
	// Defaults for sampling when a request leaves them unset.
	Temperature   float32 // default 0.8
	TopK          int     // default 40
	TopP          float32 // default 0.95
	MinP          float32 // default 0.05
	RepeatPenalty float32 // default 1 (off)
	Logger        *slog.Logger
}

func (c *LlamaConfig) defaults(trainCtx int) {
	if c.ModelName == "" {
		c.ModelName = strings.TrimSuffix(filepath.Base(c.ModelPath), ".gguf")
	}
	if c.Threads <= 0 {
		c.Threads = runtime.NumCPU()
	}
	if c.SequenceContext <= 0 {
		c.SequenceContext = min(trainCtx, 2048)
	}
	if c.Parallel <= 0 {
		c.Parallel = 4
	}
	if c.Queue <= 0 {
		c.Queue = 32
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	c.BatchSize = min(c.BatchSize, c.SequenceContext*c.Parallel)
	if c.PromptChunk <= 0 {
		c.PromptChunk = 128
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = 256
	}
	if c.Temperature == 0 {
		c.Temperature = 0.8
	}
	if c.TopK == 0 {
		c.TopK = 40
	}
	if c.TopP == 0 {
		c.TopP = 0.95
	}
	if c.MinP == 0 {
		c.MinP = 0.05
	}
	if c.RepeatPenalty == 0 {
		c.RepeatPenalty = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Llama is the in-process llama.cpp engine. One scheduler goroutine owns
// the llama.cpp context and runs continuous batching: every decode step
// carries the next token of each generating sequence plus chunks of
// waiting prompts, so requests join and leave without stalling others.
// Callers' goroutines do everything else (tokenizing, turning tokens into
// text, stop strings, calling emit), which keeps the step loop short.
type Llama struct {
	cfg    LlamaConfig
	model  *native.Model
	nctx   *native.Context
	info   ModelInfo
	tmpl   string // the GGUF chat template when llama.cpp recognises it
	seqCtx int    // positions per sequence

	queue   chan *request
	wake    chan struct{} // pokes an idle scheduler (cap 1)
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when the scheduler has exited
	once    sync.Once

	// Scheduler counters, for benchmarks and diagnostics.
	steps       atomic.Int64 // llama_decode calls
	stepTokens  atomic.Int64 // tokens decoded in them
	stepOutputs atomic.Int64 // of which sampled (generated-token rows)
}

// Stats are the scheduler's counters since start.
type LlamaStats struct {
	Steps, Tokens, Outputs int64
}

// Stats returns the scheduler's counters; Outputs/Steps is the mean number
// of sequences batched per decode step.
func (e *Llama) Stats() LlamaStats {
	return LlamaStats{Steps: e.steps.Load(), Tokens: e.stepTokens.Load(), Outputs: e.stepOutputs.Load()}
}

var _ Backend = (*Llama)(nil)

// NewLlama loads cfg.ModelPath and starts the engine.
func NewLlama(ctx context.Context, cfg LlamaConfig) (*Llama, error) {
	model, err := native.Load(ctx, cfg.ModelPath, native.ModelParams{})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrModelNotFound, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	trainCtx, err := model.TrainContext()
	if err != nil {
		model.Close()
		return nil, err
	}
	cfg.defaults(trainCtx)
	nctx, err := model.NewContext(native.ContextParams{
		ContextSize: cfg.SequenceContext * cfg.Parallel, BatchSize: cfg.BatchSize,
		Sequences: cfg.Parallel, Threads: cfg.Threads,
	})
	if err != nil {
		model.Close()
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	e := &Llama{cfg: cfg, model: model, nctx: nctx,
		queue: make(chan *request, cfg.Queue), wake: make(chan struct{}, 1),
		closing: make(chan struct{}), done: make(chan struct{})}
	// llama.cpp may round the context up; the configured size is the
	// promise, so enforce it.
	e.seqCtx = min(nctx.SequenceSize(), cfg.SequenceContext)
	e.info = e.describe()
	// Use the GGUF's template only when llama.cpp recognises it (no Jinja
	// here); otherwise the plain template.
	if t, _ := model.ChatTemplate(); t != "" {
		if _, err := model.ApplyTemplate(t, []native.ChatMessage{{Role: "user", Content: "x"}}); err == nil {
			e.tmpl = t
		} else {
			cfg.Logger.Info("chat template not recognised; using the plain template", "model", cfg.ModelName)
		}
	}
	cfg.Logger.Info("llama.cpp engine ready", "model", cfg.ModelName, "params", e.info.Parameters,
		"quantization", e.info.Quantization, "parallel", cfg.Parallel, "sequence_context", e.seqCtx,
		"threads", cfg.Threads, "build", native.BuildInfo())
	go e.run()
	return e, nil
}

func (e *Llama) describe() ModelInfo {
	info := e.model.Info()
	q := "unknown"
	if ft, ok := info.Uint("general.file_type"); ok {
		q = map[uint64]string{0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
			10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
			17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}[ft]
	}
	params, _ := e.model.Params()
	return ModelInfo{Name: e.cfg.ModelName, ContextLength: e.seqCtx, Parameters: params, Quantization: q}
}

// Name implements Backend.
func (e *Llama) Name() string { return "llama.cpp" }

// Model implements Backend.
func (e *Llama) Model(ctx context.Context, name string) (ModelInfo, error) {
	if err := e.Healthy(ctx); err != nil {
		return ModelInfo{}, err
	}
	if name != "" && name != e.cfg.ModelName {
		return ModelInfo{}, fmt.Errorf("%w: %q", ErrModelNotFound, name)
	}
	return e.info, nil
}

// Healthy implements Backend.
func (e *Llama) Healthy(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-e.closing:
		return ErrClosed
	default:
		return nil
	}
}

// Close implements Backend: it stops the scheduler (aborting a decode in
// progress), fails waiting and running requests with ErrClosed, and frees
// llama.cpp's memory.
func (e *Llama) Close() error {
	first := false
	e.once.Do(func() {
		first = true
		close(e.closing)
	})
	if !first {
		return ErrClosed
	}
	<-e.done
	return e.model.Close() // also frees the context
}

// event is what the scheduler tells a request: a token, or the end.
type event struct {
	tok  native.Token
	done bool
	stop StopReason
	err  error
}

// request is one Generate call as the scheduler sees it.
type request struct {
	ctx       context.Context // done when the caller gave up
	prompt    []native.Token
	maxTokens int
	atMax     StopReason // the stop reason when maxTokens is reached
	sampling  native.SamplerParams

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

// Generate implements Backend.
func (e *Llama) Generate(ctx context.Context, req Request, emit Emit) (Result, error) {
	start := time.Now()
	var res Result
	if err := e.Healthy(ctx); err != nil {
		return res, err
	}
	if req.Model != "" && req.Model != e.cfg.ModelName {
		return res, fmt.Errorf("%w: %q", ErrModelNotFound, req.Model)
	}
	if len(req.Messages) == 0 {
		return res, fmt.Errorf("%w: no messages", ErrFailed)
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
		return res, fmt.Errorf("%w: %d prompt tokens, context %d", ErrPromptTooLong, len(prompt), limit)
	}
	maxTokens := e.cfg.MaxTokens
	if req.Options.MaxTokens > 0 {
		maxTokens = req.Options.MaxTokens
	}
	// When the context, not MaxTokens, ends the answer, say so.
	atMax := StopLength
	if maxTokens > limit-len(prompt) {
		maxTokens, atMax = limit-len(prompt), StopContext
	}
	rctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		e.poke() // let the scheduler free our sequence now
	}()
	r := &request{ctx: rctx, prompt: prompt, maxTokens: maxTokens, atMax: atMax, sampling: e.sampling(req.Options),
		notify: make(chan struct{}, 1)}
	select {
	case e.queue <- r:
		e.poke()
	default:
		return res, fmt.Errorf("%w: %d requests waiting", ErrBusy, cap(e.queue))
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
		}
		res.Duration = time.Since(start)
		return emit(piece)
	}
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-e.done:
			return res, ErrClosed
		case <-r.notify:
		}
		evs = r.take(evs)
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
			piece, err := e.model.TokenPiece(ev.tok, false)
			if errors.Is(err, native.ErrClosed) {
				return res, ErrClosed // Close raced with this request
			}
			if err != nil {
				return res, fmt.Errorf("%w: %w", ErrFailed, err)
			}
			text, stopped := out.add(piece)
			if err := send(text); err != nil {
				return res, err
			}
			if stopped {
				res.Stop = StopString
				return res, nil
			}
		}
	}
}

func (e *Llama) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// sampling maps request options onto a sampler, filling engine defaults.
func (e *Llama) sampling(o Options) native.SamplerParams {
	p := native.SamplerParams{Temperature: e.cfg.Temperature, TopK: e.cfg.TopK, TopP: e.cfg.TopP,
		MinP: e.cfg.MinP, RepeatPenalty: e.cfg.RepeatPenalty}
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

// tokenizePrompt applies the chat template and tokenizes. Special-token
// text in messages is only parsed as control tokens when a model template
// put it there on purpose; the plain template keeps device text plain.
func (e *Llama) tokenizePrompt(msgs []Message) ([]native.Token, error) {
	var text string
	parseSpecial := false
	if e.tmpl != "" {
		cm := make([]native.ChatMessage, len(msgs))
		for i, m := range msgs {
			cm[i] = native.ChatMessage{Role: string(m.Role), Content: m.Content}
		}
		t, err := e.model.ApplyTemplate(e.tmpl, cm)
		if err == nil {
			text, parseSpecial = t, true
		}
	}
	if text == "" {
		text = PlainTemplate(msgs)
	}
	toks, err := e.model.Tokenize(text, true, parseSpecial)
	if err != nil {
		if errors.Is(err, native.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("%w: %w", ErrFailed, err)
	}
	return toks, nil
}

// PlainTemplate is the prompt format for models without a usable chat
// template: one "Role: content" line per message, then "Assistant:".
func PlainTemplate(msgs []Message) string {
	var b strings.Builder
	for _, m := range msgs {
		role := string(m.Role)
		if role == "" {
			role = string(RoleUser)
		}
		b.WriteString(strings.ToUpper(role[:1]) + role[1:])
		b.WriteString(": ")
		b.WriteString(m.Content)
		b.WriteString("\n")
	}
	b.WriteString("Assistant:")
	return b.String()
}

// textStream turns token bytes into emitted text: it holds back an
// incomplete UTF-8 character and any tail that could begin a stop string,
// and replaces invalid bytes (random or broken models produce them) with
// U+FFFD so devices only ever receive valid UTF-8.
type textStream struct {
	stops   []string
	raw     []byte // bytes not yet forming complete characters
	pending string // complete text held back for stop matching
}

func newTextStream(stops []string) *textStream {
	s := &textStream{}
	for _, st := range stops {
		if st != "" {
			s.stops = append(s.stops, st)
		}
	}
	return s
}

// add takes a token's bytes and returns the text safe to emit, and whether
// a stop string matched (the text before it is returned, the rest dropped).
func (s *textStream) add(piece []byte) ([]byte, bool) {
	s.raw = append(s.raw, piece...)
	cut := completePrefix(s.raw)
	s.pending += string(bytes.ToValidUTF8(s.raw[:cut], []byte("\uFFFD")))
	s.raw = append(s.raw[:0], s.raw[cut:]...)
	for _, st := range s.stops {
		if i := strings.Index(s.pending, st); i >= 0 {
			out := s.pending[:i]
			s.pending = ""
			return []byte(out), true
		}
	}
	hold := 0
	for _, st := range s.stops {
		for n := min(len(st)-1, len(s.pending)); n > hold; n-- {
			if strings.HasSuffix(s.pending, st[:n]) {
				hold = n
				break
			}
		}
	}
	out := s.pending[:len(s.pending)-hold]
	s.pending = s.pending[len(s.pending)-hold:]
	return []byte(out), false
}

// flush returns everything held back, at the end of generation.
func (s *textStream) flush() []byte {
	out := s.pending + string(bytes.ToValidUTF8(s.raw, []byte("\uFFFD")))
	s.pending, s.raw = "", s.raw[:0]
	return []byte(out)
}

// completePrefix is the length of b without a trailing incomplete (but so
// far valid) UTF-8 sequence, which the next token will complete.
func completePrefix(b []byte) int {
	for i := len(b) - 1; i >= 0 && i > len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			return len(b)
		}
	}
	return len(b)
}

// slot is one sequence of the shared context.
type slot struct {
	seq     int
	req     *request
	sampler *native.Sampler
	prefill int          // prompt tokens already decoded
	pos     int          // next position
	next    native.Token // sampled, to be decoded next step
	hasNext bool
	emitted int
	out     int // batch index of this slot's logits in the current step; -1 none
}

// run is the scheduler: the only goroutine that touches e.nctx.
func (e *Llama) run() {
	defer close(e.done)
	slots := make([]*slot, e.cfg.Parallel)
	free := func(i int, ev event) {
		s := slots[i]
		s.req.push(ev)
		s.sampler.Close()
		if err := e.nctx.ClearSequence(s.seq); err != nil {
			e.cfg.Logger.Warn("clearing a sequence failed", "seq", s.seq, "err", err)
		}
		slots[i] = nil
	}
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
				free(i, event{done: true, err: ErrClosed})
			}
		}
		for {
			select {
			case r := <-e.queue:
				r.push(event{done: true, err: ErrClosed})
			default:
				return
			}
		}
	}()
	var batch native.Batch
	rr := 0 // round-robin start for prompt chunks
	for {
		select {
		case <-e.closing:
			return
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
				r.push(event{done: true, err: fmt.Errorf("%w: %w", ErrFailed, err)})
				continue
			}
			if r.sampling.RepeatPenalty != 1 {
				for _, t := range r.prompt {
					smp.Accept(t)
				}
			}
			slots[i] = &slot{seq: i, req: r, sampler: smp}
		}
		// Drop sequences whose caller left (cancelled, stop string, emit error).
		for i, s := range slots {
			if s != nil && s.req.ctx.Err() != nil {
				free(i, event{done: true, err: s.req.ctx.Err()})
			}
		}
		// Build one step: each generating sequence's next token, then
		// prompt chunks round-robin in the room left.
		batch.Reset()
		for _, s := range slots {
			if s == nil {
				continue
			}
			s.out = -1
			if s.hasNext && s.req.backlog() < maxBacklog {
				s.out = batch.Len()
				batch.Add(s.next, s.pos, s.seq, true)
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
			s.prefill += n
			s.pos = s.prefill
		}
		rr++
		if batch.Len() == 0 {
			// Idle, or every sequence waits on a slow caller.
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
		e.steps.Add(1)
		e.stepTokens.Add(int64(batch.Len()))
		e.stepOutputs.Add(int64(outputs))
		if err := e.nctx.Decode(life, &batch); err != nil {
			if life.Err() != nil {
				return
			}
			// A failed step leaves its sequences' caches undefined.
			e.cfg.Logger.Error("llama_decode failed", "tokens", batch.Len(), "err", err)
			for i, s := range slots {
				if s != nil && (s.out >= 0 || s.prefill > 0) {
					free(i, event{done: true, err: fmt.Errorf("%w: %w", ErrFailed, err)})
				}
			}
			continue
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
				free(i, event{done: true, err: fmt.Errorf("%w: %w", ErrFailed, err)})
				continue
			}
			if eog, _ := e.model.IsEOG(tok); eog {
				free(i, event{done: true, stop: StopEOS})
				continue
			}
			s.req.push(event{tok: tok})
			s.emitted++
			switch {
			case s.emitted >= s.req.maxTokens:
				free(i, event{done: true, stop: s.req.atMax})
			case s.pos >= e.seqCtx:
				free(i, event{done: true, stop: StopContext})
			default:
				s.next, s.hasNext = tok, true
			}
		}
	}
}
