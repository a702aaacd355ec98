#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ggml-cpu.h"
#include "ggml.h"
#include "../mcpd_thp.h"

struct hb_harness {
	struct llama_model * model;
	struct llama_context * ctx;
	struct llama_sampler * smpl;
	struct ggml_threadpool * tp;
	const struct llama_vocab * vocab;
	bool own_model; // hb_open loaded it; hb_open_model borrowed it
	int32_t n_seq;     // sequences hb_begin and hb_step decode together
	llama_token * next; // [n_seq] sampled, not yet decoded (hb_begin, hb_step)
	struct llama_batch batch; // n_seq tokens, one per sequence
	int32_t pos;      // the position next goes to
	bool done;        // a sequence's next ends generation
};

static int64_t hb_now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void hb_quiet(enum ggml_log_level level, const char * text, void * data) {
	(void) level;
	(void) text;
	(void) data;
}

hb_harness * hb_open(const char * path, const hb_params * p) {
	llama_log_set(hb_quiet, NULL);
	llama_backend_init();
	struct llama_model_params mp = llama_model_default_params();
	mp.use_mmap = p->use_mmap;
	// The engine's way to huge pages (native/mcpd_thp.h).
	mcpd_thp * thp = NULL;
	if (p->huge && !p->use_mmap) {
		thp = malloc(sizeof *thp);
		if (thp != NULL) {
			mcpd_thp_begin(thp, p->huge_min);
			mp.progress_callback = mcpd_thp_progress;
			mp.progress_callback_user_data = thp;
		}
	}
	struct llama_model * model = llama_model_load_from_file(path, mp);
	free(thp);
	if (model == NULL) {
		return NULL;
	}
	hb_harness * h = hb_open_model(model, p);
	if (h == NULL) {
		llama_model_free(model);
		return NULL;
	}
	h->own_model = true;
	return h;
}

hb_harness * hb_open_model(struct llama_model * model, const hb_params * p) {
	hb_harness * h = calloc(1, sizeof *h);
	if (h == NULL) {
		return NULL;
	}
	h->model = model;
	h->vocab = llama_model_get_vocab(h->model);
	h->n_seq = p->n_seq > 1 ? p->n_seq : 1;
	h->next = calloc((size_t) h->n_seq, sizeof *h->next);
	h->batch = llama_batch_init(h->n_seq, 0, 1);
	if (h->next == NULL || h->batch.token == NULL) {
		hb_close(h);
		return NULL;
	}
	struct llama_context_params cp = llama_context_default_params();
	cp.n_ctx = p->n_ctx * (uint32_t) h->n_seq;
	cp.n_seq_max = (uint32_t) h->n_seq;
	cp.kv_unified = false;
	cp.n_batch = p->n_batch;
	cp.n_threads = p->n_threads;
	cp.n_threads_batch = p->n_threads;
	cp.no_perf = true;
	if (p->no_flash_attn) {
		cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
	}
	h->ctx = llama_init_from_model(h->model, cp);
	if (h->ctx == NULL) {
		hb_close(h);
		return NULL;
	}
	if (p->threadpool) {
		struct ggml_threadpool_params tpp = ggml_threadpool_params_default(p->n_threads);
		tpp.poll = p->poll;
		h->tp = ggml_threadpool_new(&tpp);
		if (h->tp == NULL) {
			hb_close(h);
			return NULL;
		}
		llama_attach_threadpool(h->ctx, h->tp, h->tp);
	}
	struct llama_sampler_chain_params sp = llama_sampler_chain_default_params();
	sp.no_perf = true;
	h->smpl = llama_sampler_chain_init(sp);
	if (h->smpl == NULL) {
		hb_close(h);
		return NULL;
	}
	llama_sampler_chain_add(h->smpl, llama_sampler_init_greedy());
	return h;
}

void hb_close(hb_harness * h) {
	if (h == NULL) {
		return;
	}
	if (h->smpl) {
		llama_sampler_free(h->smpl);
	}
	if (h->ctx) {
		llama_free(h->ctx);
	}
	if (h->tp) {
		ggml_threadpool_free(h->tp);
	}
	if (h->model && h->own_model) {
		llama_model_free(h->model);
	}
	if (h->batch.token != NULL) {
		llama_batch_free(h->batch);
	}
	free(h->next);
	free(h);
}

// hb_pause puts an idle harness's worker threads to sleep (the next
// decode wakes them), so that they do not poll while other work runs.
static void hb_pause(hb_harness * h) {
	if (h->tp != NULL) {
		ggml_threadpool_pause(h->tp);
	}
}

int hb_run(hb_harness * h, const int32_t * prompt, int32_t n_prompt, int32_t n_gen, int32_t * out, hb_result * r) {
	memset(r, 0, sizeof *r);
	llama_memory_clear(llama_get_memory(h->ctx), true);
	llama_sampler_reset(h->smpl);
	int64_t t0 = hb_now();
	int ret = llama_decode(h->ctx, llama_batch_get_one((llama_token *) prompt, n_prompt));
	if (ret != 0) {
		return -abs(ret);
	}
	llama_token tok = llama_sampler_sample(h->smpl, h->ctx, -1);
	r->first_ns = hb_now() - t0;
	for (int32_t i = 0; i < n_gen; i++) {
		out[r->n_gen++] = tok;
		if (i == n_gen - 1 || llama_vocab_is_eog(h->vocab, tok)) {
			break;
		}
		int64_t a = hb_now();
		ret = llama_decode(h->ctx, llama_batch_get_one(&tok, 1));
		int64_t b = hb_now();
		if (ret != 0) {
			return -abs(ret);
		}
		tok = llama_sampler_sample(h->smpl, h->ctx, -1);
		r->decode_ns += b - a;
		r->sample_ns += hb_now() - b;
	}
	r->total_ns = hb_now() - t0;
	hb_pause(h);
	return 0;
}

int hb_begin(hb_harness * h, const int32_t * prompt, int32_t n_prompt) {
	llama_memory_clear(llama_get_memory(h->ctx), true);
	llama_sampler_reset(h->smpl);
	h->done = false;
	struct llama_batch b = llama_batch_get_one((llama_token *) prompt, n_prompt);
	if (h->n_seq > 1) {
		b = llama_batch_init(n_prompt, 0, 1);
	}
	int ret = 0;
	// Each sequence's prompt in a decode of its own (untimed).
	for (int32_t s = 0; s < h->n_seq && ret == 0; s++) {
		if (h->n_seq > 1) {
			for (int32_t i = 0; i < n_prompt; i++) {
				b.token[i] = prompt[i];
				b.pos[i] = i;
				b.n_seq_id[i] = 1;
				b.seq_id[i][0] = s;
				b.logits[i] = i == n_prompt - 1;
			}
			b.n_tokens = n_prompt;
		}
		ret = llama_decode(h->ctx, b);
		if (ret == 0) {
			h->next[s] = llama_sampler_sample(h->smpl, h->ctx, -1);
			h->done = h->done || llama_vocab_is_eog(h->vocab, h->next[s]);
		}
	}
	if (h->n_seq > 1) {
		llama_batch_free(b);
	}
	if (ret != 0) {
		return -abs(ret);
	}
	h->pos = n_prompt;
	hb_pause(h);
	return 0;
}

int32_t hb_step(hb_harness * h, int32_t n, int64_t * ns) {
	int64_t t0 = hb_now();
	int32_t i = 0;
	for (; i < n && !h->done; i++) {
		int ret;
		if (h->n_seq == 1) {
			ret = llama_decode(h->ctx, llama_batch_get_one(h->next, 1));
		} else {
			for (int32_t s = 0; s < h->n_seq; s++) {
				h->batch.token[s] = h->next[s];
				h->batch.pos[s] = h->pos;
				h->batch.n_seq_id[s] = 1;
				h->batch.seq_id[s][0] = s;
				h->batch.logits[s] = true;
			}
			h->batch.n_tokens = h->n_seq;
			ret = llama_decode(h->ctx, h->batch);
		}
		if (ret != 0) {
			return -abs(ret);
		}
		h->pos++;
		for (int32_t s = 0; s < h->n_seq; s++) {
			h->next[s] = llama_sampler_sample(h->smpl, h->ctx, h->n_seq == 1 ? -1 : s);
			h->done = h->done || llama_vocab_is_eog(h->vocab, h->next[s]);
		}
	}
	*ns = hb_now() - t0;
	hb_pause(h);
	return i * h->n_seq;
}

int32_t hb_next(const hb_harness * h, int32_t s) {
	return s >= 0 && s < h->n_seq ? h->next[s] : -1;
}

int hb_drop_cache(const char * path) {
#ifdef POSIX_FADV_DONTNEED
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		return -1;
	}
	int ret = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
	return ret;
#else
	(void) path;
	return 0;
#endif
}

// The memory benchmarks: each thread streams through its own contiguous
// part of one buffer, either summing 64-bit words (the compiler vectorizes
// the loop: AVX2 on x86-64-v3, NEON on ARM), which is what the memory
// system can deliver, or running ggml's own Q8_0 dot product over it as
// rows of a weight matrix, which is what the kernel decoding a Q8_0 model
// can consume. On a cache-sized buffer the second is the kernel's
// arithmetic bound; on a large one, its memory bound.
typedef struct hb_start {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int state; // 0 wait, 1 go, -1 give up
} hb_start;

#define HB_ROW 768 // Q8_0 weights per row: the benchmark model's n_embd

typedef struct hb_worker {
	const uint8_t * p;
	size_t n;     // bytes
	int passes;   // over the part: a cache-sized one needs many to time
	int kernel;
	const void * act; // the activation row (Q8_0) for HB_KERNEL_Q8_0
	hb_start * start;
	uint64_t sum;
} hb_worker;

static void hb_sum_words(hb_worker * w) {
	const uint64_t * p = (const uint64_t *) w->p;
	size_t n = w->n / sizeof(uint64_t);
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i + 4 <= n; i += 4) {
		s0 += p[i];
		s1 += p[i + 1];
		s2 += p[i + 2];
		s3 += p[i + 3];
	}
	w->sum = s0 + s1 + s2 + s3;
}

static void hb_q8_0_rows(hb_worker * w) {
	const struct ggml_type_traits_cpu * tt = ggml_get_type_traits_cpu(GGML_TYPE_Q8_0);
	size_t row = ggml_row_size(GGML_TYPE_Q8_0, HB_ROW);
	float acc = 0;
	for (size_t off = 0; off + row <= w->n; off += row) {
		float r;
		tt->vec_dot(HB_ROW, &r, 0, w->p + off, 0, w->act, 0, 1);
		acc += r;
	}
	w->sum = (uint64_t) acc;
}

static void * hb_work(void * arg) {
	hb_worker * w = arg;
	pthread_mutex_lock(&w->start->mu);
	while (w->start->state == 0) {
		pthread_cond_wait(&w->start->cond, &w->start->mu);
	}
	int state = w->start->state;
	pthread_mutex_unlock(&w->start->mu);
	if (state < 0) {
		return NULL;
	}
	uint64_t sum = 0;
	for (int i = 0; i < w->passes; i++) {
		if (w->kernel == HB_KERNEL_Q8_0) {
			hb_q8_0_rows(w);
		} else {
			hb_sum_words(w);
		}
		sum += w->sum;
	}
	w->sum = sum;
	return NULL;
}

volatile uint64_t hb_sink; // keeps the sums, so the reads cannot be dropped

static void hb_release(hb_start * st, int state) {
	pthread_mutex_lock(&st->mu);
	st->state = state;
	pthread_cond_broadcast(&st->cond);
	pthread_mutex_unlock(&st->mu);
}

void * hb_buffer_new(size_t bytes, bool huge) {
	void * buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		return NULL;
	}
	if (huge) {
		madvise(buf, bytes, MADV_HUGEPAGE);
	}
	// Fault every page in now, not while timing. As Q8_0 blocks, 0x01
	// bytes are small finite scales and quants.
	memset(buf, 1, bytes);
	return buf;
}

void hb_buffer_free(void * buf, size_t bytes) {
	munmap(buf, bytes);
}

double hb_stream(const void * buf, size_t bytes, int kernel, int n_threads, int reps) {
	if (buf == NULL || n_threads < 1 || n_threads > 256 || bytes < 4096 || reps < 1) {
		return 0;
	}
	// Parts are whole Q8_0 rows, so both kernels read the same bytes.
	size_t row = ggml_row_size(GGML_TYPE_Q8_0, HB_ROW);
	size_t part = bytes / (size_t) n_threads / row * row;
	// At least 256 MiB per pass in all, so thread start-up is noise.
	int passes = (int) ((((size_t) 256 << 20) + bytes - 1) / bytes);
	uint8_t act[sizeof(float) * HB_ROW]; // large enough for a Q8_0 row
	if (kernel == HB_KERNEL_Q8_0) {
		float x[HB_ROW];
		for (int i = 0; i < HB_ROW; i++) {
			x[i] = (float) (i % 7) - 3.0f;
		}
		ggml_cpu_init();
		ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float(x, act, HB_ROW);
	}
	double best = 0;
	hb_worker w[256];
	pthread_t th[256];
	for (int rep = 0; rep < reps; rep++) {
		hb_start st = { .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
		int started = 0;
		for (int t = 0; t < n_threads; t++) {
			w[t] = (hb_worker){ .p = (const uint8_t *) buf + (size_t) t * part, .n = part, .passes = passes, .kernel = kernel,
				.act = act, .start = &st };
			if (pthread_create(&th[t], NULL, hb_work, &w[t]) != 0) {
				break;
			}
			started++;
		}
		// Time from the release to the last join: thread start-up is
		// outside, and every thread reads while the others do.
		int64_t t0 = hb_now();
		hb_release(&st, started == n_threads ? 1 : -1);
		for (int t = 0; t < started; t++) {
			pthread_join(th[t], NULL);
			hb_sink += w[t].sum;
		}
		int64_t dt = hb_now() - t0;
		if (started < n_threads) {
			return 0;
		}
		double bw = (double) (part * (size_t) n_threads * (size_t) passes) / ((double) dt / 1e9);
		if (bw > best) {
			best = bw;
		}
	}
	return best;
}
