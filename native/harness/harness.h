// The reference harness: a minimal greedy decode loop written in C against
// the same llama.cpp objects (same sources, same CGO_CFLAGS) mcpd links,
// and a STREAM-like memory read benchmark. Go calls each once per run, so
// no Go code runs inside the timed loops.
#ifndef MCPD_HARNESS_H
#define MCPD_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "llama.h"

typedef struct hb_params {
	int32_t n_threads;
	uint32_t n_ctx;
	uint32_t n_batch;
	bool use_mmap;
	// Attach a persistent ggml threadpool, as llama.cpp's own tools do;
	// without one, every llama_decode starts and joins its worker threads.
	bool threadpool;
	uint32_t poll; // the threadpool's polling level (ggml: 0–100, default 50)
	bool no_flash_attn; // llama.cpp's default is auto (on for the CPU)
	// With use_mmap false: ask for transparent huge pages for the weights'
	// buffer before llama.cpp reads the file into it (a new anonymous
	// mapping of at least huge_min bytes when loading starts).
	bool huge;
	size_t huge_min;
	// Sequences decoded together by hb_begin/hb_step (0 or 1: one). With
	// more, n_ctx is each sequence's and the KV cache is split per
	// sequence, as the engine's is (not unified).
	int32_t n_seq;
} hb_params;

typedef struct hb_harness hb_harness;

// hb_open loads the model and creates one context and a greedy sampler;
// NULL on failure. hb_open_model does the same on a model loaded
// elsewhere (the engine's: the very same weights in memory), which must
// outlive the harness.
hb_harness * hb_open(const char * path, const hb_params * p);
hb_harness * hb_open_model(struct llama_model * model, const hb_params * p);
void hb_close(hb_harness * h);

typedef struct hb_result {
	int32_t n_gen;      // tokens generated (stops early at end of generation)
	int64_t first_ns;   // prompt decode + first sample: time to first token
	int64_t total_ns;   // the whole run
	int64_t decode_ns;  // inside llama_decode for generated tokens
	int64_t sample_ns;  // inside llama_sampler_sample for generated tokens
} hb_result;

// hb_run clears the KV cache, decodes prompt[0..n_prompt) in one batch and
// then generates up to n_gen tokens greedily, one llama_decode each, writing
// them to out, and lets the worker threads sleep. Returns 0, or a negative
// llama_decode status.
int hb_run(hb_harness * h, const int32_t * prompt, int32_t n_prompt, int32_t n_gen, int32_t * out, hb_result * r);

// hb_begin starts a generation in steps: clears the KV cache, decodes the
// prompt and samples the first token. hb_step then decodes up to n tokens,
// one llama_decode and one greedy sample each, and returns how many (0
// once an end-of-generation token came; a negative llama_decode status on
// failure), with the time they took in ns. Both let the worker threads
// sleep before they return, as hb_run does, so a harness that waits costs
// the machine nothing: step chunks of several harnesses, or of the
// harness and another engine, can take turns on the same cores.
//
// With n_seq sequences (hb_params), hb_begin evaluates the prompt for each
// and every hb_step decodes one token of every sequence per llama_decode
// (a batch of n_seq tokens, each its sequence's logits): the same work as
// n_seq devices generating at once, with nothing around it. hb_step then
// counts tokens of all sequences (n × n_seq).
int hb_begin(hb_harness * h, const int32_t * prompt, int32_t n_prompt);
int32_t hb_step(hb_harness * h, int32_t n, int64_t * ns);
// hb_next is sequence s's token sampled and not yet decoded; -1 for no
// such sequence.
int32_t hb_next(const hb_harness * h, int32_t s);

// hb_drop_cache asks the kernel to drop path's pages from the page cache
// (those no process maps); 0 or an error.
int hb_drop_cache(const char * path);

// A buffer for the read benchmark, every page faulted in; huge asks for
// transparent huge pages. NULL when memory cannot be had.
void * hb_buffer_new(size_t bytes, bool huge);
void hb_buffer_free(void * buf, size_t bytes);

// hb_stream runs a kernel over buf with n_threads threads (each its own
// contiguous part), reps times, and returns the best pass in bytes per
// second; 0 when threads cannot be started.
#define HB_KERNEL_READ 0 // sum 64-bit words: the memory system's read bandwidth
#define HB_KERNEL_Q8_0 1 // ggml's Q8_0 dot product, the buffer as weight rows
double hb_stream(const void * buf, size_t bytes, int kernel, int n_threads, int reps);

#endif
