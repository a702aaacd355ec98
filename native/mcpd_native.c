#include "mcpd_native.h"
#include "_cgo_export.h"
#include "ggml-cpu.h"
#include "mcpd_thp.h"
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>

static void mcpd_log_cb(enum ggml_log_level level, const char * text, void * user_data) {
	(void) user_data;
	mcpdLog((int) level, (char *) text);
}

void mcpd_log_to_go(void) {
	llama_log_set(mcpd_log_cb, NULL);
}

unsigned mcpd_built_features(void) {
	unsigned f = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
	f |= MCPD_FEAT_X86_64_V3;
#endif
#if defined(__ARM_NEON)
	f |= MCPD_FEAT_NEON;
#endif
#if defined(__arm__) && defined(__ARM_FEATURE_FMA)
	// On 32-bit ARM, FMA comes with VFPv4; on arm64 it is part of the base.
	f |= MCPD_FEAT_VFPV4;
#endif
#if defined(__ARM_FEATURE_DOTPROD)
	f |= MCPD_FEAT_DOTPROD;
#endif
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
	f |= MCPD_FEAT_FP16;
#endif
#if defined(__ARM_FEATURE_MATMUL_INT8)
	f |= MCPD_FEAT_I8MM;
#endif
#if defined(__ARM_FEATURE_SVE)
	f |= MCPD_FEAT_SVE;
#endif
	return f;
}

bool mcpd_abort_cb(void * data) {
	return __atomic_load_n(&((mcpd_abort *) data)->flag, __ATOMIC_RELAXED) != 0;
}

void mcpd_abort_set(mcpd_abort * a, int v) {
	__atomic_store_n(&a->flag, v, __ATOMIC_RELAXED);
}

struct llama_model * mcpd_load_model(const char * path, int32_t n_gpu_layers, bool use_mmap, size_t huge_min,
		size_t * huge_bytes) {
	struct llama_model_params p = llama_model_default_params();
	p.n_gpu_layers = n_gpu_layers;
	p.use_mmap = use_mmap;
	*huge_bytes = 0;
	mcpd_thp * thp = NULL;
	if (!use_mmap && huge_min > 0) {
		thp = malloc(sizeof *thp);
		if (thp != NULL) {
			mcpd_thp_begin(thp, huge_min);
			p.progress_callback = mcpd_thp_progress;
			p.progress_callback_user_data = thp;
		}
	}
	struct llama_model * m = llama_model_load_from_file(path, p);
	if (thp != NULL) {
		*huge_bytes = thp->advised;
		free(thp);
	}
	return m;
}

struct llama_context * mcpd_init_context(struct llama_model * model, uint32_t n_ctx,
		uint32_t n_batch, uint32_t n_seq_max, int32_t n_threads, int32_t n_threads_batch,
		bool kv_unified, mcpd_abort * abort) {
	struct llama_context_params p = llama_context_default_params();
	p.n_ctx = n_ctx;
	p.n_batch = n_batch;
	p.n_ubatch = n_batch;
	p.n_seq_max = n_seq_max;
	p.n_threads = n_threads;
	p.n_threads_batch = n_threads_batch;
	p.kv_unified = kv_unified;
	p.no_perf = true;
	p.abort_callback = mcpd_abort_cb;
	p.abort_callback_data = abort;
	return llama_init_from_model(model, p);
}

static struct ggml_threadpool * mcpd_pool(int32_t n, uint32_t poll) {
	struct ggml_threadpool_params p = ggml_threadpool_params_default(n);
	p.poll = poll;
	return ggml_threadpool_new(&p);
}

bool mcpd_attach_pools(struct llama_context * ctx, int32_t n, int32_t n_batch, uint32_t poll, mcpd_pools * pools) {
	mcpd_pools p = { mcpd_pool(n, poll), NULL };
	if (p.tp == NULL) {
		return false;
	}
	p.tp_batch = p.tp;
	if (n_batch != n) {
		p.tp_batch = mcpd_pool(n_batch, poll);
		if (p.tp_batch == NULL) {
			ggml_threadpool_free(p.tp);
			return false;
		}
	}
	llama_attach_threadpool(ctx, p.tp, p.tp_batch);
	*pools = p;
	return true;
}

void mcpd_pause_pools(mcpd_pools * pools) {
	if (pools->tp != NULL) {
		ggml_threadpool_pause(pools->tp);
	}
	if (pools->tp_batch != NULL && pools->tp_batch != pools->tp) {
		ggml_threadpool_pause(pools->tp_batch);
	}
}

void mcpd_free_pools(mcpd_pools * pools) {
	if (pools->tp_batch != NULL && pools->tp_batch != pools->tp) {
		ggml_threadpool_free(pools->tp_batch);
	}
	if (pools->tp != NULL) {
		ggml_threadpool_free(pools->tp);
	}
	pools->tp = pools->tp_batch = NULL;
}

int32_t mcpd_decode(struct llama_context * ctx, struct llama_batch * batch, mcpd_pools * pools, int32_t n,
		const int32_t * tokens, const int32_t * pos, const int32_t * seq, const int8_t * logits) {
	// llama.cpp computes a batch of more than one token on the batch pool,
	// one token on the other: the idle one must not poll meanwhile.
	if (pools->tp_batch != pools->tp) {
		ggml_threadpool_pause(n > 1 ? pools->tp : pools->tp_batch);
	}
	for (int32_t i = 0; i < n; i++) {
		batch->token[i] = tokens[i];
		batch->pos[i] = pos[i];
		batch->n_seq_id[i] = 1;
		batch->seq_id[i][0] = seq[i];
		batch->logits[i] = logits[i];
	}
	batch->n_tokens = n;
	return llama_decode(ctx, *batch);
}

struct llama_sampler * mcpd_sampler(bool greedy, float temp, int32_t top_k, float top_p,
		float min_p, float repeat_penalty, int32_t repeat_last_n, uint32_t seed) {
	struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
	cp.no_perf = true;
	struct llama_sampler * chain = llama_sampler_chain_init(cp);
	if (chain == NULL) {
		return NULL;
	}
	if (repeat_penalty > 0 && repeat_penalty != 1.0f) {
		llama_sampler_chain_add(chain, llama_sampler_init_penalties(repeat_last_n, repeat_penalty, 0.0f, 0.0f));
	}
	if (greedy) {
		llama_sampler_chain_add(chain, llama_sampler_init_greedy());
		return chain;
	}
	if (top_k > 0) {
		llama_sampler_chain_add(chain, llama_sampler_init_top_k(top_k));
	}
	if (top_p > 0 && top_p < 1.0f) {
		llama_sampler_chain_add(chain, llama_sampler_init_top_p(top_p, 1));
	}
	if (min_p > 0) {
		llama_sampler_chain_add(chain, llama_sampler_init_min_p(min_p, 1));
	}
	llama_sampler_chain_add(chain, llama_sampler_init_temp(temp));
	llama_sampler_chain_add(chain, llama_sampler_init_dist(seed));
	return chain;
}

int32_t mcpd_argmax(struct llama_context * ctx, int32_t idx, int32_t n_vocab) {
	const float * l = llama_get_logits_ith(ctx, idx);
	if (l == NULL || n_vocab <= 0) {
		return -1;
	}
	// Two passes, the first a max reduction the compiler vectorizes: the
	// same choice as greedy's "first i with the largest logit" loop, NaNs
	// included (a NaN is never greater, so never chosen; a NaN first
	// logit, which greedy keeps, matches no value and falls back to 0).
	float m = l[0];
	int32_t i = 1;
#if defined(__AVX__)
	// _mm256_max_ps(x, acc) keeps acc when x is NaN: the scalar rule.
	__m256 acc = _mm256_set1_ps(m);
	for (; i + 8 <= n_vocab; i += 8) {
		acc = _mm256_max_ps(_mm256_loadu_ps(l + i), acc);
	}
	float lanes[8];
	_mm256_storeu_ps(lanes, acc);
	for (int k = 0; k < 8; k++) {
		m = lanes[k] > m ? lanes[k] : m;
	}
#endif
	for (; i < n_vocab; i++) {
		m = l[i] > m ? l[i] : m;
	}
	for (int32_t i = 0; i < n_vocab; i++) {
		if (l[i] == m) {
			return i;
		}
	}
	return 0;
}

int32_t mcpd_sample_grammar(struct llama_sampler * chain, struct llama_sampler * grammar, struct llama_context * ctx,
		int32_t idx, int32_t n_vocab, llama_token_data * buf) {
	const float * logits = llama_get_logits_ith(ctx, idx);
	if (logits == NULL) {
		return -1;
	}
	for (int32_t i = 0; i < n_vocab; i++) {
		buf[i].id = i;
		buf[i].logit = logits[i];
		buf[i].p = 0.0f;
	}
	llama_token_data_array cur = { buf, (size_t) n_vocab, -1, false };
	llama_sampler_apply(grammar, &cur);
	bool any = false;
	for (size_t i = 0; i < cur.size; i++) {
		if (cur.data[i].logit != -INFINITY) {
			any = true;
			break;
		}
	}
	if (!any) {
		return -1;
	}
	llama_sampler_apply(chain, &cur);
	if (cur.selected < 0 || (size_t) cur.selected >= cur.size || cur.data[cur.selected].logit == -INFINITY) {
		return -1;
	}
	llama_token t = cur.data[cur.selected].id;
	// Only a token the grammar admitted reaches accept: accepting any
	// other throws a C++ exception, which would abort the process.
	llama_sampler_accept(grammar, t);
	llama_sampler_accept(chain, t);
	return t;
}
