package llamacpp

import (
	"fmt"

	"github.com/mcpd-project/mcpd/backends"

	"github.com/mcpd-project/mcpd/native/gguf"
)

// MemoryEstimate is what loading a GGUF model in-process will take.
type MemoryEstimate struct {
	Weights  int64 // the tensor data (llama.cpp maps or copies all of it)
	KVCache  int64 // f16 K and V for every layer and every context position
	Overhead int64 // compute buffers and runtime: 64 MiB + 5 % of the weights
	Tokens   int   // context positions the KV cache holds (sequence context × parallel)
}

// Total is the sum of the parts.
func (e MemoryEstimate) Total() int64 { return e.Weights + e.KVCache + e.Overhead }

// EstimateMemory estimates what llama.cpp needs for the model described by
// info with parallel sequences of seqCtx tokens each (seqCtx 0: the
// model's context, at most 2048, as New defaults it).
func EstimateMemory(info *gguf.Info, seqCtx, parallel int) MemoryEstimate {
	arch := info.StringValue("general.architecture")
	get := func(k string) int64 {
		v, _ := info.Uint(arch + "." + k)
		return int64(min(v, 1<<40))
	}
	if seqCtx <= 0 {
		seqCtx = int(min(max(get("context_length"), 1), 2048))
	}
	parallel = max(parallel, 1)
	layers, embd := get("block_count"), get("embedding_length")
	heads, kvHeads := get("attention.head_count"), get("attention.head_count_kv")
	if kvHeads == 0 {
		kvHeads = heads
	}
	kvEmbd := embd
	if heads > 0 {
		kvEmbd = embd * kvHeads / heads // grouped-query attention shrinks K and V
	}
	e := MemoryEstimate{Weights: info.FileSize - info.DataOffset, Tokens: seqCtx * parallel}
	e.KVCache = 2 * 2 * layers * kvEmbd * int64(e.Tokens) // K and V, 2 bytes (f16) each
	e.Overhead = 64<<20 + e.Weights/20
	return e
}

// CheckMemory refuses a model whose estimate exceeds the available memory,
// naming both numbers; available 0 (unknown) passes.
func CheckMemory(path string, est MemoryEstimate, available int64) error {
	if available <= 0 || est.Total() <= available {
		return nil
	}
	return fmt.Errorf("%w: %s needs about %d MiB (weights %d MiB + KV cache %d MiB for %d tokens + %d MiB overhead) but only %d MiB is available (MemAvailable); use a smaller model or quantization, a smaller context or fewer parallel requests",
		backends.ErrNoMemory, path, est.Total()>>20, est.Weights>>20, est.KVCache>>20, est.Tokens, est.Overhead>>20, available>>20)
}

// FitParallel is the most sequences, up to want, whose estimate fits in
// available bytes (0: unknown, want); at least 1, so that a model too big
// even for one is refused by CheckMemory with the numbers, not here.
func FitParallel(info *gguf.Info, seqCtx, want int, available int64) int {
	if available <= 0 {
		return want
	}
	for p := want; p > 1; p-- {
		if EstimateMemory(info, seqCtx, p).Total() <= available {
			return p
		}
	}
	return 1
}
