// C helpers for package native. Definitions live in mcpd_native.c because
// a cgo file with //export may only declare C functions in its preamble.
#ifndef MCPD_NATIVE_H
#define MCPD_NATIVE_H

#include <stdbool.h>
#include <stdint.h>
#include "llama.h"

// Routes llama.cpp and ggml logging to Go (mcpdLog).
void mcpd_log_to_go(void);

// The instruction-set extensions this translation unit was compiled to use
// (MCPD_FEAT_* bits): the same CGO_CFLAGS build ggml, so they are what the
// binary needs from the CPU it runs on.
#define MCPD_FEAT_X86_64_V3  (1u << 0) // AVX2, FMA, F16C (BMI2 comes with -march=x86-64-v3)
#define MCPD_FEAT_NEON       (1u << 1) // Advanced SIMD (always on arm64; -mfpu=neon* on armv7)
#define MCPD_FEAT_VFPV4      (1u << 2) // fused multiply-add in VFP/NEON (armv7 -mfpu=neon-vfpv4)
#define MCPD_FEAT_DOTPROD    (1u << 3) // SDOT/UDOT (armv8.2-a+dotprod, Cortex-A55/A76)
#define MCPD_FEAT_FP16       (1u << 4) // half-precision vector arithmetic (armv8.2-a+fp16)
#define MCPD_FEAT_I8MM       (1u << 5) // int8 matrix multiply (armv8.6-a, +i8mm)
#define MCPD_FEAT_SVE        (1u << 6) // scalable vectors (+sve)
unsigned mcpd_built_features(void);

// An abort flag in C memory: ggml polls it from its worker threads while
// computing, and Go sets it from another goroutine to stop a decode.
typedef struct mcpd_abort { volatile int flag; } mcpd_abort;
bool mcpd_abort_cb(void * data);
void mcpd_abort_set(mcpd_abort * a, int v);

// Context parameters with the abort callback wired.
struct llama_context * mcpd_init_context(struct llama_model * model, uint32_t n_ctx,
		uint32_t n_batch, uint32_t n_seq_max, int32_t n_threads, int32_t n_threads_batch,
		bool kv_unified, mcpd_abort * abort);

// The persistent ggml threadpools a context computes on: one when decode
// and batch thread counts are equal. Without them ggml starts and joins
// its worker threads inside every llama_decode.
typedef struct mcpd_pools { struct ggml_threadpool * tp, * tp_batch; } mcpd_pools;

// Creates pools for n and n_batch threads polling at level poll (0–100)
// and attaches them to ctx; false (ctx unchanged) when threads cannot be
// had. The caller frees the pools it replaces, after this returns.
bool mcpd_attach_pools(struct llama_context * ctx, int32_t n, int32_t n_batch, uint32_t poll, mcpd_pools * pools);
// Lets the pools' worker threads sleep now instead of polling for the next
// decode (which wakes them).
void mcpd_pause_pools(mcpd_pools * pools);
// Frees pools no context uses any more.
void mcpd_free_pools(mcpd_pools * pools);

// Loads a model, CPU only; n_gpu_layers is kept for later. Without mmap
// and with huge_min > 0, the weights go to transparent huge pages
// (mcpd_thp.h: the new buffer of at least huge_min bytes); *huge_bytes
// gets the bytes so advised.
struct llama_model * mcpd_load_model(const char * path, int32_t n_gpu_layers, bool use_mmap, size_t huge_min,
		size_t * huge_bytes);

// Fills batch from parallel arrays (one sequence per token) and decodes on
// pools.
int32_t mcpd_decode(struct llama_context * ctx, struct llama_batch * batch, mcpd_pools * pools, int32_t n,
		const int32_t * tokens, const int32_t * pos, const int32_t * seq, const int8_t * logits);

// Builds a sampler chain: penalties, then greedy or top-k, top-p, min-p,
// temperature and a seeded draw.
struct llama_sampler * mcpd_sampler(bool greedy, float temp, int32_t top_k, float top_p,
		float min_p, float repeat_penalty, int32_t repeat_last_n, uint32_t seed);

// Greedy sampling without llama.cpp's sampler: the first token of the
// highest logit at batch index idx, as llama_sampler_init_greedy picks it,
// without building its 32000-entry candidate array; -1 without logits.
int32_t mcpd_argmax(struct llama_context * ctx, int32_t idx, int32_t n_vocab);

// Samples the logits at idx under a grammar: the grammar sampler first
// (tokens it does not admit get -inf), then the chain; the token is
// accepted by both. buf holds n_vocab entries. Returns -1, accepting
// nothing, when the grammar admits no token.
int32_t mcpd_sample_grammar(struct llama_sampler * chain, struct llama_sampler * grammar, struct llama_context * ctx,
		int32_t idx, int32_t n_vocab, llama_token_data * buf);

#endif
