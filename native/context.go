package native

/*
#include <stdlib.h>
#include "mcpd_native.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// ContextParams size a Context.
type ContextParams struct {
	// ContextSize is the KV cache size in tokens, shared by all sequences
	// (0: min(model's training context, 4096)).
	ContextSize int
	// BatchSize is the most tokens one Decode takes (0: 512).
	BatchSize int
	// Sequences is the number of independent sequences (0: 1).
	Sequences int
	// Threads decode single tokens; ThreadsBatch decode prompts
	// (0: the CPU count).
	Threads, ThreadsBatch int
	// Unified shares all ContextSize cells among the sequences; otherwise
	// each sequence owns ContextSize/Sequences cells, so one long request
	// can never starve the others (and attention skips other sequences'
	// cells, which llama.cpp recommends for unrelated sequences).
	Unified bool
	// Poll is how hard idle worker threads poll for the next decode before
	// they sleep, 0–100 as ggml counts (0: ggml's default, 50; negative:
	// sleep at once).
	Poll int
}

// Context is a KV cache and compute state on a Model. It decodes batches
// of tokens from up to Sequences independent sequences. Methods are safe
// for concurrent use but serialize: llama.cpp contexts are single-threaded.
type Context struct {
	mu    sync.Mutex // serializes all use of ptr
	amu   sync.Mutex // guards abort's memory; see setAbort
	ptr   *C.struct_llama_context
	batch C.struct_llama_batch
	abort *C.mcpd_abort // C memory: ggml threads read it during a decode
	pools C.mcpd_pools  // the worker threads, kept from decode to decode
	// retired holds the pools SetThreads replaced. ggml's CPU backend keeps
	// a pointer to the pool it last computed on and pauses that pool when
	// the next decode switches to another (ggml_backend_cpu_set_threadpool),
	// so a replaced pool must live until a decode has switched: freed after
	// the next successful decode, or at Close after llama_free.
	retired []C.mcpd_pools
	poll    C.uint32_t
	model   *Model
	nCtx    int
	nCtxSeq int
	nBatch  int
	nSeq    int
	outputs []bool // batch indices of the last Decode that have logits
}

// NewContext creates a context on m.
func (m *Model) NewContext(p ContextParams) (*Context, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ptr == nil {
		return nil, fmt.Errorf("model: %w", ErrClosed)
	}
	if p.ContextSize == 0 {
		p.ContextSize = min(int(C.llama_model_n_ctx_train(m.ptr)), 4096)
	}
	if p.BatchSize == 0 {
		p.BatchSize = 512
	}
	if p.Sequences == 0 {
		p.Sequences = 1
	}
	if p.Threads == 0 {
		p.Threads = runtime.NumCPU()
	}
	if p.ThreadsBatch == 0 {
		p.ThreadsBatch = p.Threads
	}
	switch {
	case p.ContextSize < 8 || p.ContextSize > 1<<20:
		return nil, fmt.Errorf("%w: context size %d", ErrInvalid, p.ContextSize)
	case p.BatchSize < 1 || p.BatchSize > p.ContextSize:
		return nil, fmt.Errorf("%w: batch size %d (context %d)", ErrInvalid, p.BatchSize, p.ContextSize)
	case p.Sequences < 1 || p.Sequences > 256:
		return nil, fmt.Errorf("%w: %d sequences", ErrInvalid, p.Sequences)
	case p.Threads < 1 || p.Threads > 512 || p.ThreadsBatch < 1 || p.ThreadsBatch > 512:
		return nil, fmt.Errorf("%w: threads %d/%d", ErrInvalid, p.Threads, p.ThreadsBatch)
	case p.Poll > 100:
		return nil, fmt.Errorf("%w: poll level %d", ErrInvalid, p.Poll)
	}
	poll := C.uint32_t(50)
	if p.Poll != 0 {
		poll = C.uint32_t(max(p.Poll, 0))
	}
	abort := (*C.mcpd_abort)(C.calloc(1, C.size_t(unsafe.Sizeof(C.mcpd_abort{}))))
	if abort == nil {
		return nil, fmt.Errorf("%w: out of memory", ErrInvalid)
	}
	ptr := C.mcpd_init_context(m.ptr, C.uint32_t(p.ContextSize), C.uint32_t(p.BatchSize), C.uint32_t(p.Sequences),
		C.int32_t(p.Threads), C.int32_t(p.ThreadsBatch), C.bool(p.Unified), abort)
	if ptr == nil {
		C.free(unsafe.Pointer(abort))
		return nil, fmt.Errorf("%w: llama.cpp could not create a context of %d tokens", ErrModel, p.ContextSize)
	}
	c := &Context{ptr: ptr, abort: abort, model: m, nCtx: int(C.llama_n_ctx(ptr)), nCtxSeq: int(C.llama_n_ctx_seq(ptr)),
		nBatch: p.BatchSize, nSeq: p.Sequences, poll: poll}
	// Persistent worker threads, as llama.cpp's own tools attach: without
	// them every llama_decode creates and joins its threads (measured: a
	// generated token cost up to ~20 % more on 2 cores).
	if !C.mcpd_attach_pools(ptr, C.int32_t(p.Threads), C.int32_t(p.ThreadsBatch), poll, &c.pools) {
		C.llama_free(ptr)
		C.free(unsafe.Pointer(abort))
		return nil, fmt.Errorf("%w: cannot start %d worker threads", ErrModel, p.Threads)
	}
	c.batch = C.llama_batch_init(C.int32_t(p.BatchSize), 0, 1)
	m.contexts[c] = struct{}{}
	return c, nil
}

// Size is the context size in tokens.
func (c *Context) Size() int { return c.nCtx }

// SequenceSize is the most positions one sequence can hold.
func (c *Context) SequenceSize() int { return c.nCtxSeq }

// BatchSize is the most tokens one Decode takes.
func (c *Context) BatchSize() int { return c.nBatch }

// Sequences is the number of sequences.
func (c *Context) Sequences() int { return c.nSeq }

// Close frees the context. Closing the Model closes it too.
func (c *Context) Close() error {
	m := c.model
	m.mu.Lock()
	if m.contexts != nil {
		delete(m.contexts, c)
	}
	m.mu.Unlock()
	if !c.free() {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	return nil
}

// free releases the C side once; it reports whether this call did it.
func (c *Context) free() bool {
	// Stop a decode in progress so Close does not wait for a long prompt.
	c.setAbort()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return false
	}
	C.llama_batch_free(c.batch)
	C.llama_free(c.ptr)
	C.mcpd_free_pools(&c.pools) // after the context that computes on them
	c.freeRetired()
	c.amu.Lock()
	C.free(unsafe.Pointer(c.abort))
	c.ptr, c.abort = nil, nil
	c.amu.Unlock()
	c.batch = C.struct_llama_batch{}
	return true
}

// setAbort raises the abort flag if the context is alive. It must not take
// c.mu, which a decode holds; amu guards the flag's memory instead.
func (c *Context) setAbort() {
	c.amu.Lock()
	defer c.amu.Unlock()
	if c.abort != nil {
		C.mcpd_abort_set(c.abort, 1)
	}
}

// Batch collects tokens for one Decode. The zero value is ready to use.
type Batch struct {
	tokens []Token
	pos    []int32
	seq    []int32
	logits []int8
}

// Add appends token t at position pos of sequence seq; logits asks for its
// output (needed to sample the next token after it).
func (b *Batch) Add(t Token, pos, seq int, logits bool) {
	b.tokens = append(b.tokens, t)
	b.pos = append(b.pos, int32(pos))
	b.seq = append(b.seq, int32(seq))
	var l int8
	if logits {
		l = 1
	}
	b.logits = append(b.logits, l)
}

// Len is the number of tokens in the batch.
func (b *Batch) Len() int { return len(b.tokens) }

// Reset empties the batch, keeping its memory.
func (b *Batch) Reset() {
	b.tokens, b.pos, b.seq, b.logits = b.tokens[:0], b.pos[:0], b.seq[:0], b.logits[:0]
}

// Decode evaluates b. It returns ctx's error promptly if ctx is done,
// aborting the computation in progress; the KV cache of the batch's
// sequences is then undefined past their previous length: clear them.
func (c *Context) Decode(ctx context.Context, b *Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	n := b.Len()
	if n == 0 || n > c.nBatch {
		return fmt.Errorf("%w: batch of %d tokens (1..%d)", ErrInvalid, n, c.nBatch)
	}
	nv := c.model.nVocab
	for i := range n {
		if b.tokens[i] < 0 || int(b.tokens[i]) >= nv {
			return fmt.Errorf("%w: token %d", ErrInvalid, b.tokens[i])
		}
		if b.seq[i] < 0 || int(b.seq[i]) >= c.nSeq {
			return fmt.Errorf("%w: sequence %d", ErrInvalid, b.seq[i])
		}
		if b.pos[i] < 0 || int(b.pos[i]) >= c.nCtxSeq {
			return fmt.Errorf("%w: position %d", ErrInvalid, b.pos[i])
		}
	}
	c.outputs = c.outputs[:0]
	// Raise the abort flag from whatever goroutine sees ctx end; wait for
	// that callback before lowering it, so it cannot abort the next decode.
	fired := make(chan struct{})
	abort := c.abort
	stop := context.AfterFunc(ctx, func() {
		C.mcpd_abort_set(abort, 1)
		close(fired)
	})
	ret := C.mcpd_decode(c.ptr, &c.batch, &c.pools, C.int32_t(n),
		(*C.int32_t)(unsafe.Pointer(&b.tokens[0])), (*C.int32_t)(unsafe.Pointer(&b.pos[0])),
		(*C.int32_t)(unsafe.Pointer(&b.seq[0])), (*C.int8_t)(unsafe.Pointer(&b.logits[0])))
	if !stop() {
		<-fired
	}
	C.mcpd_abort_set(abort, 0)
	switch ret {
	case 0:
		c.freeRetired()
		for i := range n {
			c.outputs = append(c.outputs, b.logits[i] != 0)
		}
		return nil
	case 1:
		return fmt.Errorf("%w: no KV slot for %d tokens", ErrContextFull, n)
	case 2:
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%w: aborted", ErrDecode)
	}
	return fmt.Errorf("%w: llama_decode returned %d", ErrDecode, int(ret))
}

// Logits copies the output of batch index i of the last Decode.
func (c *Context) Logits(i int) ([]float32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkOutput(i); err != nil {
		return nil, err
	}
	p := C.llama_get_logits_ith(c.ptr, C.int32_t(i))
	if p == nil {
		return nil, fmt.Errorf("%w: no logits at %d", ErrInvalid, i)
	}
	return append([]float32(nil), unsafe.Slice((*float32)(unsafe.Pointer(p)), c.model.nVocab)...), nil
}

// checkOutput rejects indices llama.cpp would abort on. Caller holds c.mu.
func (c *Context) checkOutput(i int) error {
	if c.ptr == nil {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	if i < 0 || i >= len(c.outputs) || !c.outputs[i] {
		return fmt.Errorf("%w: batch index %d has no output", ErrInvalid, i)
	}
	return nil
}

// ClearSequence drops sequence seq from the KV cache.
func (c *Context) ClearSequence(seq int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	if seq < 0 || seq >= c.nSeq {
		return fmt.Errorf("%w: sequence %d", ErrInvalid, seq)
	}
	C.llama_memory_seq_rm(C.llama_get_memory(c.ptr), C.llama_seq_id(seq), -1, -1)
	return nil
}

// TrimSequence drops positions from and after of sequence seq from the KV
// cache, keeping [0, from): what a new request sharing a prefix with the
// sequence's old tokens reuses. It reports false when llama.cpp cannot
// cut a sequence in the middle (recurrent models): clear it instead.
func (c *Context) TrimSequence(seq, from int) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return false, fmt.Errorf("context: %w", ErrClosed)
	}
	if seq < 0 || seq >= c.nSeq || from < 0 {
		return false, fmt.Errorf("%w: sequence %d from %d", ErrInvalid, seq, from)
	}
	return bool(C.llama_memory_seq_rm(C.llama_get_memory(c.ptr), C.llama_seq_id(seq), C.llama_pos(from), -1)), nil
}

// CopySequence makes sequence dst hold what sequence src holds, dropping
// dst's own cells: a prefix evaluated once serves many sequences. Where
// the sequences have their own cells (not Unified), llama.cpp copies the
// whole of src's cells — SequenceSize positions, whatever src uses — at
// the start of the next Decode, before that batch is evaluated.
func (c *Context) CopySequence(src, dst int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	if src < 0 || src >= c.nSeq || dst < 0 || dst >= c.nSeq {
		return fmt.Errorf("%w: sequences %d → %d", ErrInvalid, src, dst)
	}
	if src == dst {
		return nil
	}
	mem := C.llama_get_memory(c.ptr)
	// llama.cpp copies between sequences of different cells only whole,
	// into an emptied destination.
	C.llama_memory_seq_rm(mem, C.llama_seq_id(dst), -1, -1)
	C.llama_memory_seq_cp(mem, C.llama_seq_id(src), C.llama_seq_id(dst), -1, -1)
	return nil
}

// Clear empties the whole KV cache.
func (c *Context) Clear() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	C.llama_memory_clear(C.llama_get_memory(c.ptr), C.bool(true))
	c.outputs = c.outputs[:0]
	return nil
}

// Idle lets the worker threads sleep until the next Decode. Call it when
// no decode follows soon: after one, ggml's workers poll for the next for
// a while (Poll), which keeps a core busy — on a small machine, the core
// the rest of the process or another program needs.
func (c *Context) Idle() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	C.mcpd_pause_pools(&c.pools)
	return nil
}

// SetThreads changes the thread counts.
func (c *Context) SetThreads(threads, threadsBatch int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return fmt.Errorf("context: %w", ErrClosed)
	}
	if threads < 1 || threadsBatch < 1 || threads > 512 || threadsBatch > 512 {
		return fmt.Errorf("%w: threads %d/%d", ErrInvalid, threads, threadsBatch)
	}
	old := c.pools
	if !C.mcpd_attach_pools(c.ptr, C.int32_t(threads), C.int32_t(threadsBatch), c.poll, &c.pools) {
		return fmt.Errorf("%w: cannot start %d worker threads", ErrInvalid, max(threads, threadsBatch))
	}
	c.retired = append(c.retired, old) // still the backend's until a decode switches
	C.llama_set_n_threads(c.ptr, C.int32_t(threads), C.int32_t(threadsBatch))
	return nil
}

// freeRetired frees the pools SetThreads replaced; c.mu is held.
func (c *Context) freeRetired() {
	for i := range c.retired {
		C.mcpd_free_pools(&c.retired[i])
	}
	c.retired = nil
}
