package llamacpp

import (
	"log/slog"

	"path/filepath"
	"runtime"
	"strings"

	"github.com/mcpd-project/mcpd/backends"
)

// Config configures the in-process llama.cpp engine.
type Config struct {
	ModelPath string
	// ModelName is the name requests use (default: the file name without
	// .gguf). "" in a request always means this model.
	ModelName string
	// Threads for decoding (default: the CPU count).
	Threads int
	// MapModel maps the model file instead of reading it into memory that
	// asks for transparent huge pages (the default; native.ModelParams.
	// HugePages): less read at start and pages the kernel may drop and
	// re-read, but decoding was 8–11 % slower on the reference VM
	// (docs/native.md).
	MapModel bool
	// SequenceContext is the context each sequence gets, in tokens
	// (default: min(training context, 2048)). The KV cache holds
	// Parallel × SequenceContext tokens.
	SequenceContext int
	// Parallel is the most requests decoded together. Default: 8, or as
	// many as fit the memory available when Open checks it (at least 1).
	// On a CPU a decode step reads all weights once whatever the number
	// of sequences, so batching 8 costs little time; each sequence costs
	// its KV cache (SequenceContext positions).

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
	// NoKVReuse clears a sequence's KV cache when its request ends, so
	// every prompt is evaluated whole. By default a sequence keeps it, and
	// a new request evaluates only what its prompt adds to what some
	// sequence holds (a conversation's earlier turns, another device's
	// system prompt; kv.go). For comparisons and tests.
	NoKVReuse bool
	// WarmFile, when set, is where the engine saves the KV caches its
	// sequences keep when it closes, and loads them from when it starts
	// (warm.go): an old conversation's next turn after a restart evaluates
	// only what it adds. A file that does not fit (corrupt, another model,
	// build or layout) is refused with a log line.
	WarmFile string
	// WarmBudget bounds the warm file in bytes: the most recently used
	// sequences that fit are saved (0: all).
	WarmBudget int64
	// Budget, when set, bounds the caches sequences keep between requests
	// together with the other caches sharing it (the response cache): the
	// least recently used are cleared while it is over (kv.go keepBudget).
	Budget *backends.Budget
	// MaxTokens is the default generation limit (default 256).
	MaxTokens int
	// Defaults for sampling when a request leaves them unset.
	Temperature   float32 // default 0.8
	TopK          int     // default 40
	TopP          float32 // default 0.95
	MinP          float32 // default 0.05
	RepeatPenalty float32 // default 1 (off)
	Logger        *slog.Logger

	// beforeStep, set by benchmarks only, runs on the scheduler goroutine
	// before every decode step; backlog counts the tokens the callers
	// have not taken yet.
	beforeStep func(backlog func() int)
	// mergeFirstTokens, set by benchmarks and tests only, puts new
	// requests' prompts into the running sequences' steps even when a
	// short step of their own would give their first tokens sooner
	// (firstTokensFirst) while it returns true: the A/B baseline. It runs
	// on the scheduler goroutine before every step.
	mergeFirstTokens func() bool
}

// defaultParallel is Config.Parallel when unset.
const defaultParallel = 8

func (c *Config) defaults(trainCtx int) {
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
		c.Parallel = defaultParallel
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
