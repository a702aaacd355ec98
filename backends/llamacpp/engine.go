package llamacpp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native"
	"github.com/mcpd-project/mcpd/native/gguf"
)

// Engine is the in-process llama.cpp engine. One scheduler goroutine owns
// the llama.cpp context and runs continuous batching: every decode step
// carries the next token of each generating sequence plus chunks of
// waiting prompts, so requests join and leave without stalling others.
// Callers' goroutines do everything else (tokenizing, turning tokens into
// text, stop strings, calling emit), which keeps the step loop short.
type Engine struct {
	cfg    Config
	model  *native.Model
	nctx   *native.Context
	info   backends.ModelInfo
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
	tracing     atomic.Int32 // requests filling a Timeline: the scheduler times its steps
	// KV cache reuse (kv.go).
	promptTokens atomic.Int64 // prompt tokens of admitted requests
	promptCached atomic.Int64 // of which found in a sequence's cache
	kvCopies     atomic.Int64 // prefixes copied from another sequence
	kvDropped    atomic.Int64 // cached tokens dropped for another prompt
	// kv is the scheduler's once it runs; before that (loadWarm) and
	// after it stopped (saveWarm), Open and Close use it.
	kv         *kvState
	warmLoaded atomic.Int64 // tokens loaded from the warm file at start
	// The shared budget (kv.go keepBudget).
	kvHits, kvMisses atomic.Int64 // requests that found some / none of their prompt cached
	kvEvictions      atomic.Int64 // sequences cleared for the budget
	kvBytes          atomic.Int64 // what free sequences' caches hold now
	kvTokenBytes     int64        // K and V of one position, all layers
	kvAccounted      int64        // what the budget was last told (scheduler's)
	// The warm file (warm.go): work for the scheduler between two steps,
	// and which snapshot was written last.
	ctl         chan func(*kvState, []*slot)
	warmSeq     atomic.Int64
	warmMu      sync.Mutex
	warmWritten int64
	// warmPrint fingerprints the tokens the warm file holds (warmPrinted:
	// known), so a save of what it holds already writes nothing.
	warmPrint   atomic.Uint64
	warmPrinted atomic.Bool
}

// Stats are the scheduler's counters since start.
type Stats struct {
	Steps, Tokens, Outputs int64
	// PromptTokens of admitted requests, PromptCached of them not
	// evaluated again (kept in a sequence's KV cache, or copied from
	// another sequence KVCopies times); KVDropped cached tokens were
	// dropped to make room for other prompts.
	PromptTokens, PromptCached, KVCopies, KVDropped int64
	// WarmLoaded tokens were loaded from the warm file at start.
	WarmLoaded int64
}

// Stats returns the scheduler's counters; Outputs/Steps is the mean number
// of sequences batched per decode step.
func (e *Engine) Stats() Stats {
	return Stats{Steps: e.steps.Load(), Tokens: e.stepTokens.Load(), Outputs: e.stepOutputs.Load(),
		PromptTokens: e.promptTokens.Load(), PromptCached: e.promptCached.Load(),
		KVCopies: e.kvCopies.Load(), KVDropped: e.kvDropped.Load(), WarmLoaded: e.warmLoaded.Load()}
}

var (
	_ backends.Backend          = (*Engine)(nil)
	_ backends.CapacityReporter = (*Engine)(nil)
)

// Capacity implements backends.CapacityReporter: the sequences decoded
// together.
func (e *Engine) Capacity() int { return e.cfg.Parallel }

// Starter returns the backends.Starter that opens the engine with cfg for
// backends.Open, after checking that the model fits the memory the
// machine has available.
func Starter(cfg Config) backends.Starter {
	return func(ctx context.Context, env backends.StartEnv) (backends.Backend, error) {
		if cfg.Logger == nil {
			cfg.Logger = env.Logger
		}
		e, err := Open(ctx, cfg, env.Machine.MemAvailable)
		if err != nil {
			return nil, err
		}
		return e, nil
	}
}

// Open validates the GGUF file, refuses a model that would not fit in
// memAvailable bytes (0: unknown, not checked) and starts the engine.
func Open(ctx context.Context, cfg Config, memAvailable int64) (*Engine, error) {
	info, err := gguf.ValidateFile(cfg.ModelPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = FitParallel(info, cfg.SequenceContext, defaultParallel, memAvailable)
	}
	if err := CheckMemory(cfg.ModelPath, EstimateMemory(info, cfg.SequenceContext, cfg.Parallel), memAvailable); err != nil {
		return nil, err
	}
	return New(ctx, cfg)
}

// New loads cfg.ModelPath and starts the engine.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	model, err := native.Load(ctx, cfg.ModelPath, native.ModelParams{HugePages: !cfg.MapModel})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", backends.ErrModelNotFound, err)
		}
		return nil, fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
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
		return nil, fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	}
	e := &Engine{cfg: cfg, model: model, nctx: nctx,
		queue: make(chan *request, cfg.Queue), wake: make(chan struct{}, 1), ctl: make(chan func(*kvState, []*slot), 1),
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
		"threads", cfg.Threads, "huge_page_mib", model.HugePageBytes()>>20, "build", native.BuildInfo())
	e.kv = newKVState(cfg.Parallel)
	e.kvTokenBytes = EstimateMemory(model.Info(), 1, 1).KVCache
	e.warmUp(ctx)
	e.loadWarm()
	e.keepBudget(e.kv, make([]*slot, cfg.Parallel), -1)
	go e.run()
	return e, nil
}

func (e *Engine) describe() backends.ModelInfo {
	info := e.model.Info()
	q := "unknown"
	if ft, ok := info.Uint("general.file_type"); ok {
		q = map[uint64]string{0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
			10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
			17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}[ft]
	}
	params, _ := e.model.Params()
	return backends.ModelInfo{Name: e.cfg.ModelName, ContextLength: e.seqCtx, Parameters: params, Quantization: q}
}

// Name implements Backend.
func (e *Engine) Name() string { return "llama.cpp" }

// Model implements Backend.
func (e *Engine) Model(ctx context.Context, name string) (backends.ModelInfo, error) {
	if err := e.Healthy(ctx); err != nil {
		return backends.ModelInfo{}, err
	}
	if name != "" && name != e.cfg.ModelName {
		return backends.ModelInfo{}, fmt.Errorf("%w: %q", backends.ErrModelNotFound, name)
	}
	return e.info, nil
}

// Healthy implements Backend.
func (e *Engine) Healthy(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-e.closing:
		return backends.ErrClosed
	default:
		return nil
	}
}

// Close implements Backend: it stops the scheduler (aborting a decode in
// progress), fails waiting and running requests with ErrClosed, and frees
// llama.cpp's memory.
func (e *Engine) Close() error {
	first := false
	e.once.Do(func() {
		first = true
		close(e.closing)
	})
	if !first {
		return backends.ErrClosed
	}
	<-e.done
	e.saveWarm()
	if e.cfg.Budget != nil { // a replaced engine gives its share back
		e.cfg.Budget.Add(-e.kvAccounted)
	}
	return e.model.Close() // also frees the context
}

var _ backends.KVReporter = (*Engine)(nil)

// KVStats implements backends.KVReporter.
func (e *Engine) KVStats() backends.KVStats {
	st := e.Stats()
	return backends.KVStats{PromptTokens: st.PromptTokens, PromptCached: st.PromptCached, Copies: st.KVCopies,
		Dropped: st.KVDropped, Hits: e.kvHits.Load(), Misses: e.kvMisses.Load(), Evictions: e.kvEvictions.Load(),
		Bytes: e.kvBytes.Load(), WarmLoaded: st.WarmLoaded}
}
