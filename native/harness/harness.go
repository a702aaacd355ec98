// Package harness is the same-run reference for mcpd's llama.cpp engine:
// a greedy decode loop written in C (harness.c) against the very objects
// package native links — the same llama.cpp sources from the pinned
// ollama module, compiled once by cgo with the Makefile's CGO_CFLAGS — and
// a STREAM-like memory read benchmark, the physical limit of decoding a
// quantized model on a CPU (every generated token reads every weight).
//
// Go calls into C once per run, so nothing of Go runs inside the timed
// loops: engine ÷ harness is what the binding, the scheduler and the Go
// runtime cost, and weight bytes per second ÷ read bandwidth is how close
// llama.cpp itself gets to the memory system. `make bench-native` reports
// both from one process, interleaved (backends/llamacpp/bench_test.go).
package harness

/*
#cgo CPPFLAGS: -I${SRCDIR}/../include
#include <stdlib.h>
#include "harness.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/mcpd-project/mcpd/native/gguf"

	// The same llama.cpp and ggml package native links: one build, one
	// set of objects for the engine and the harness.
	_ "github.com/ollama/ollama/llama/llama.cpp/src"
)

// Params shape the harness's llama.cpp context.
type Params struct {
	Threads int  // decode threads (0: 2)
	Context int  // KV cache size in tokens (0: 512)
	Batch   int  // logical and physical batch size (0: 512)
	NoMmap  bool // read the file into memory instead of mapping it
	// NoThreadpool leaves ggml to start and join its worker threads on
	// every decode, as it does when no threadpool is attached.
	NoThreadpool bool
	Poll         int  // threadpool polling level 0–100 (0: ggml's default, 50; <0: none)
	NoFlashAttn  bool // llama.cpp's default is auto: on for the CPU
	// HugePages reads the weights into transparent huge pages (implies
	// NoMmap).
	HugePages bool
	// Sequences that Begin and Step decode together (0: 1), each with
	// Context tokens of its own KV cache: Step then decodes one token of
	// every sequence per llama_decode, as the engine does for that many
	// devices at once, and counts the tokens of all of them.
	Sequences int
}

// Harness is one model, context and greedy sampler driven from C.
// Not safe for concurrent use.
type Harness struct {
	h *C.hb_harness
}

// Open validates and loads the GGUF file at path.
func Open(path string, p Params) (*Harness, error) {
	info, err := gguf.ValidateFile(path)
	if err != nil {
		return nil, err
	}
	var tensors int64
	for _, t := range info.Tensors {
		tensors += t.Size
	}
	cp := p.c()
	cp.huge_min = C.size_t(tensors * 9 / 10)
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	h := C.hb_open(cpath, &cp)
	if h == nil {
		return nil, fmt.Errorf("harness: llama.cpp could not load %s", path)
	}
	return &Harness{h: h}, nil
}

// OpenModel runs the harness on a model already loaded — the engine's,
// from native.Model.LlamaModel — so that harness and engine read the very
// same weights in memory: on a VM, where two copies of the same bytes can
// be 10–15 % apart in read speed (how the host backs each page), that is
// the only fair comparison of the code around them. The model must
// outlive the harness; its loading settings (NoMmap, HugePages) are moot.
func OpenModel(model unsafe.Pointer, p Params) (*Harness, error) {
	if model == nil {
		return nil, errors.New("harness: no model")
	}
	cp := p.c()
	h := C.hb_open_model((*C.struct_llama_model)(model), &cp)
	if h == nil {
		return nil, errors.New("harness: llama.cpp could not create a context")
	}
	return &Harness{h: h}, nil
}

// c fills in defaults and converts.
func (p Params) c() C.hb_params {
	if p.Threads == 0 {
		p.Threads = 2
	}
	if p.Context == 0 {
		p.Context = 512
	}
	if p.Batch == 0 {
		p.Batch = 512
	}
	poll := 50
	switch {
	case p.Poll < 0:
		poll = 0
	case p.Poll > 0:
		poll = min(p.Poll, 100)
	}
	return C.hb_params{n_threads: C.int32_t(p.Threads), n_ctx: C.uint32_t(p.Context), n_batch: C.uint32_t(p.Batch),
		use_mmap: C.bool(!p.NoMmap && !p.HugePages), threadpool: C.bool(!p.NoThreadpool), poll: C.uint32_t(poll),
		no_flash_attn: C.bool(p.NoFlashAttn), huge: C.bool(p.HugePages), n_seq: C.int32_t(max(p.Sequences, 1))}
}

// DropCache asks the kernel to drop the file at path from the page cache
// (pages no process maps), so that the next harness mapping it reads it
// as after a reboot. How the cache was filled decides how fast llama.cpp
// decodes from a mapped file: on the reference VM a file just written
// (make models) decoded 2× slower than one read back from disk, whose
// pages come in large folios the kernel can map 2 MiB at a time.
func DropCache(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if ret := C.hb_drop_cache(cpath); ret != 0 {
		return fmt.Errorf("harness: cannot drop %s from the page cache (%d)", path, int(ret))
	}
	return nil
}

// Close frees everything; a second Close does nothing.
func (h *Harness) Close() {
	if h.h != nil {
		C.hb_close(h.h)
		h.h = nil
	}
}

// Result times one Run.
type Result struct {
	Tokens int           // generated
	TTFT   time.Duration // prompt decode and first sample
	Total  time.Duration
	Decode time.Duration // in llama_decode, generated tokens only
	Sample time.Duration // in the sampler, generated tokens only
}

// GenPerSec is decode speed after the first token, the engine
// benchmark's gen-tok/s.
func (r Result) GenPerSec() float64 {
	if r.Tokens < 2 || r.Total <= r.TTFT {
		return 0
	}
	return float64(r.Tokens-1) / (r.Total - r.TTFT).Seconds()
}

// Run decodes prompt, then generates up to n tokens greedily (fewer at an
// end-of-generation token) and returns them.
func (h *Harness) Run(prompt []int32, n int) ([]int32, Result, error) {
	if h.h == nil {
		return nil, Result{}, errors.New("harness: closed")
	}
	if len(prompt) == 0 || n < 1 {
		return nil, Result{}, errors.New("harness: empty prompt or nothing to generate")
	}
	// C memory for the token arrays: the run is one long cgo call and
	// needs no Go pointers held across it.
	cp := (*C.int32_t)(C.malloc(C.size_t(4 * (len(prompt) + n))))
	defer C.free(unsafe.Pointer(cp))
	buf := unsafe.Slice((*int32)(unsafe.Pointer(cp)), len(prompt)+n)
	copy(buf, prompt)
	var r C.hb_result
	ret := C.hb_run(h.h, cp, C.int32_t(len(prompt)), C.int32_t(n), (*C.int32_t)(unsafe.Pointer(&buf[len(prompt)])), &r)
	if ret != 0 {
		return nil, Result{}, fmt.Errorf("harness: llama_decode returned %d", int(ret))
	}
	out := append([]int32(nil), buf[len(prompt):len(prompt)+int(r.n_gen)]...)
	return out, Result{Tokens: int(r.n_gen), TTFT: time.Duration(r.first_ns), Total: time.Duration(r.total_ns),
		Decode: time.Duration(r.decode_ns), Sample: time.Duration(r.sample_ns)}, nil
}

// Begin starts a generation to be run in Steps: it decodes prompt and
// samples the first token. Untimed.
func (h *Harness) Begin(prompt []int32) error {
	if h.h == nil {
		return errors.New("harness: closed")
	}
	if len(prompt) == 0 {
		return errors.New("harness: empty prompt")
	}
	cp := (*C.int32_t)(C.malloc(C.size_t(4 * len(prompt))))
	defer C.free(unsafe.Pointer(cp))
	copy(unsafe.Slice((*int32)(unsafe.Pointer(cp)), len(prompt)), prompt)
	if ret := C.hb_begin(h.h, cp, C.int32_t(len(prompt))); ret != 0 {
		return fmt.Errorf("harness: llama_decode returned %d", int(ret))
	}
	return nil
}

// Step generates up to n more tokens of the generation Begin started (one
// llama_decode and one greedy sample each, in one call into C) and returns
// how many — 0 once the model ended the generation — and their time.
// Between Steps the worker threads sleep, so steps of the harness and of
// other code can take turns on the same cores: on a shared machine the
// fair way to compare two things that differ by a few percent is to
// alternate them every few tens of milliseconds.
func (h *Harness) Step(n int) (int, time.Duration, error) {
	if h.h == nil {
		return 0, 0, errors.New("harness: closed")
	}
	var ns C.int64_t
	got := C.hb_step(h.h, C.int32_t(n), &ns)
	if got < 0 {
		return 0, 0, fmt.Errorf("harness: llama_decode returned %d", int(got))
	}
	return int(got), time.Duration(ns), nil
}

// Next is each sequence's token sampled and not yet decoded (after Begin
// or Step), one per sequence.
func (h *Harness) Next() []int32 {
	if h.h == nil {
		return nil
	}
	var out []int32
	for s := C.int32_t(0); ; s++ {
		t := C.hb_next(h.h, s)
		if t < 0 {
			return out
		}
		out = append(out, int32(t))
	}
}

// Interleave runs the same greedy generation of n tokens after prompt on
// every harness in hs, chunk tokens each in turn (the order alternating),
// and returns each one's time per token: harnesses with different
// settings compared within tens of milliseconds of each other.
func Interleave(hs []*Harness, prompt []int32, n, chunk int) ([]time.Duration, error) {
	if len(hs) == 0 || n < 1 || chunk < 1 {
		return nil, fmt.Errorf("harness: interleave %d harnesses, %d tokens in chunks of %d", len(hs), n, chunk)
	}
	total := make([]time.Duration, len(hs))
	count := make([]int, len(hs))
	for _, h := range hs {
		if err := h.Begin(prompt); err != nil {
			return nil, err
		}
	}
	for turn := 0; count[0] < n; turn++ {
		for x := range hs {
			j := x
			if turn%2 == 1 {
				j = len(hs) - 1 - x
			}
			k, d, err := hs[j].Step(min(chunk, n-count[j]))
			if err == nil && k == 0 { // the model ended its answer: again
				if err = hs[j].Begin(prompt); err == nil {
					k, d, err = hs[j].Step(min(chunk, n-count[j]))
				}
			}
			if err != nil {
				return nil, err
			}
			total[j] += d
			count[j] += k
		}
	}
	for j := range total {
		total[j] /= time.Duration(max(count[j], 1))
	}
	return total, nil
}

// Memory is a buffer for measuring read bandwidth, in C memory with every
// page already faulted in.
type Memory struct {
	p    unsafe.Pointer
	size int64
}

// NewMemory allocates size bytes; huge asks the kernel for transparent
// huge pages (what the memory system can do with the fewest TLB misses).
// Make size several times the last-level cache, or the figure is the
// cache's.
func NewMemory(size int64, huge bool) (*Memory, error) {
	if size < 64<<10 {
		return nil, fmt.Errorf("harness: %d bytes is too small to measure memory", size)
	}
	p := C.hb_buffer_new(C.size_t(size), C.bool(huge))
	if p == nil {
		return nil, fmt.Errorf("harness: cannot allocate %d bytes", size)
	}
	return &Memory{p: p, size: size}, nil
}

// ReadBandwidth is the best of reps passes of threads threads reading the
// whole buffer (each thread its own part), in bytes per second.
func (m *Memory) ReadBandwidth(threads, reps int) (float64, error) {
	return m.stream(C.HB_KERNEL_READ, threads, reps)
}

// Q8_0Rate is the same with ggml's Q8_0 dot product reading the buffer
// as rows of weights against one activation row: the bytes per second the
// decode kernel consumes, bound by memory on a large buffer and by
// arithmetic on one that fits the caches.
func (m *Memory) Q8_0Rate(threads, reps int) (float64, error) {
	return m.stream(C.HB_KERNEL_Q8_0, threads, reps)
}

func (m *Memory) stream(kernel C.int, threads, reps int) (float64, error) {
	if m.p == nil {
		return 0, errors.New("harness: memory freed")
	}
	bw := float64(C.hb_stream(m.p, C.size_t(m.size), kernel, C.int(threads), C.int(reps)))
	if bw <= 0 {
		return 0, fmt.Errorf("harness: memory benchmark failed (%d threads, %d passes)", threads, reps)
	}
	return bw, nil
}

// Free releases the buffer; a second Free does nothing.
func (m *Memory) Free() {
	if m.p != nil {
		C.hb_buffer_free(m.p, C.size_t(m.size))
		m.p = nil
	}
}

// WeightBytesPerToken is how many bytes of weights one decode step of one
// token reads: every tensor once, except the token embedding, of which a
// step reads a single row — unless the model has no output tensor and
// multiplies by the embedding matrix instead (tied output). KV cache reads
// are left out: at short contexts they are small next to the weights.
func WeightBytesPerToken(info *gguf.Info) int64 {
	tied := true
	for _, t := range info.Tensors {
		if t.Name == "output.weight" {
			tied = false
		}
	}
	var n int64
	for _, t := range info.Tensors {
		if t.Name == "token_embd.weight" && !tied && len(t.Dims) == 2 && t.Dims[1] > 0 {
			n += t.Size / t.Dims[1]
			continue
		}
		n += t.Size
	}
	return n
}
