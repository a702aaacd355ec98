// C helpers for package native. Definitions live in mcpd_native.c because
// a cgo file with //export may only declare C functions in its preamble.
#ifndef MCPD_NATIVE_H
#define MCPD_NATIVE_H

#include <stdbool.h>
#include <stdint.h>
#include "llama.h"

// Routes llama.cpp and ggml logging to Go (mcpdLog).
void mcpd_log_to_go(void);

// Whether this translation unit was compiled for x86-64-v3 (AVX2, FMA,
// F16C): the same CGO_CFLAGS build ggml, so it tells what the binary needs.
int mcpd_built_x86_64_v3(void);

// An abort flag in C memory: ggml polls it from its worker threads while
// computing, and Go sets it from another goroutine to stop a decode.
typedef struct mcpd_abort { volatile int flag; } mcpd_abort;
bool mcpd_abort_cb(void * data);
void mcpd_abort_set(mcpd_abort * a, int v);

// Context parameters with the abort callback wired.
struct llama_context * mcpd_init_context(struct llama_model * model, uint32_t n_ctx,
		uint32_t n_batch, uint32_t n_seq_max, int32_t n_threads, int32_t n_threads_batch,
		bool kv_unified, mcpd_abort * abort);

// Loads a model with mmap, CPU only; n_gpu_layers is kept for later.
struct llama_model * mcpd_load_model(const char * path, int32_t n_gpu_layers, bool use_mmap);

// Fills batch from parallel arrays (one sequence per token) and decodes.
int32_t mcpd_decode(struct llama_context * ctx, struct llama_batch * batch, int32_t n,
		const int32_t * tokens, const int32_t * pos, const int32_t * seq, const int8_t * logits);

// Builds a sampler chain: penalties, then greedy or top-k, top-p, min-p,
// temperature and a seeded draw.
struct llama_sampler * mcpd_sampler(bool greedy, float temp, int32_t top_k, float top_p,
		float min_p, float repeat_penalty, int32_t repeat_last_n, uint32_t seed);

#endif
