// Transparent huge pages for a model's weights, shared by package native
// (mcpd_native.c) and the reference harness (harness/harness.c): static
// functions, so each includes its own copy.
//
// Decoding reads every weight once per token. From 4 KiB pages that costs
// a TLB miss every 4 KiB, and far more under a hypervisor (a nested page
// walk); from 2 MiB pages, 512× fewer (measured on the 2-core VM: 8–11 %
// faster decode than the mapped file). llama.cpp has no option for it, but
// when it reads the file (use_mmap false) it first allocates the weights'
// buffer, then calls the progress callback before reading each tensor: at
// the first call the buffer is a new anonymous mapping nothing has written
// yet, so madvise(MADV_HUGEPAGE) there makes every page fault of the
// reads that follow take a huge page, with no copying. Where THP is off
// ("never") or not Linux, the weights simply stay in 4 KiB pages. Another
// new anonymous mapping as large (a Go heap arena another thread maps
// meanwhile) would be advised too: harmless, it only gets huge pages.
// The kernel merges a new mapping with an adjacent anonymous one of the
// same protection: placed below it (the kernel's top-down layout) the
// merged mapping has a new start; placed above it (qemu-user's bottom-up
// layout for its guests) it keeps the old start and grows. Both are new.
#ifndef MCPD_THP_H
#define MCPD_THP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#define MCPD_THP_MAX_MAPS 4096

typedef struct mcpd_thp {
	uintptr_t before[MCPD_THP_MAX_MAPS]; // anonymous mappings before loading: starts
	size_t before_size[MCPD_THP_MAX_MAPS]; // and sizes
	int n_before;
	size_t min;     // the smallest mapping taken for the weights
	bool done;      // the first progress call happened
	size_t advised; // bytes given MADV_HUGEPAGE
} mcpd_thp;

// mcpd_thp_anon lists the private read-write anonymous mappings.
static int mcpd_thp_anon(uintptr_t * start, size_t * size, int max) {
	int n = 0;
#ifdef __linux__
	FILE * f = fopen("/proc/self/maps", "r");
	if (f == NULL) {
		return 0;
	}
	char line[512];
	while (n < max && fgets(line, sizeof line, f) != NULL) {
		unsigned long lo, hi, off, inode;
		char perms[8], dev[16];
		int name = 0;
		if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &lo, &hi, perms, &off, dev, &inode, &name) < 6) {
			continue;
		}
		// No file, no name ([heap], [stack] and the like are not ours).
		if (inode != 0 || strncmp(perms, "rw-p", 4) != 0 || (name > 0 && line[name] != '\0' && line[name] != '\n')) {
			continue;
		}
		start[n] = lo;
		size[n] = hi - lo;
		n++;
	}
	fclose(f);
#else
	(void) start;
	(void) size;
	(void) max;
#endif
	return n;
}

// mcpd_thp_begin notes the mappings that exist before loading; min is
// the size below which a new mapping is not the weights' buffer.
static void mcpd_thp_begin(mcpd_thp * t, size_t min) {
	memset(t, 0, sizeof *t);
	t->n_before = mcpd_thp_anon(t->before, t->before_size, MCPD_THP_MAX_MAPS);
	t->min = min;
}

// mcpd_thp_progress is the llama_model_params progress callback.
static bool mcpd_thp_progress(float progress, void * data) {
	(void) progress;
	mcpd_thp * t = data;
	if (t->done) {
		return true;
	}
	t->done = true;
#ifdef __linux__
	uintptr_t start[MCPD_THP_MAX_MAPS];
	size_t size[MCPD_THP_MAX_MAPS];
	int n = mcpd_thp_anon(start, size, MCPD_THP_MAX_MAPS);
	for (int i = 0; i < n; i++) {
		size_t grown = size[i]; // what this mapping gained since mcpd_thp_begin
		for (int j = 0; j < t->n_before; j++) {
			if (t->before[j] == start[i]) {
				grown = size[i] > t->before_size[j] ? size[i] - t->before_size[j] : 0;
				break;
			}
		}
		if (grown >= t->min && madvise((void *) start[i], size[i], MADV_HUGEPAGE) == 0) {
			t->advised += grown;
		}
	}
#endif
	return true;
}

#endif
