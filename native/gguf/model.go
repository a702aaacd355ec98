package gguf

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"math"
)

// Spec is the shape of a llama-architecture model to generate.
type Spec struct {
	Name       string
	Layers     int
	Dim        int // n_embd
	Heads      int
	KVHeads    int
	FF         int // feed-forward width
	Vocab      int // total tokens, including <unk>, <s>, </s> and 256 byte tokens
	Context    int // llama.context_length
	TiedOutput bool
	// Weights is the type of every 2-D weight (F32, F16 or Q8_0); norms
	// are always F32, as llama.cpp expects.
	Weights TensorType
	Seed    uint64
	// ChatTemplate, when not empty, is stored as tokenizer.chat_template.
	ChatTemplate string
}

// TinySpec is the test model: ≈116k parameters, F32. It is small enough for
// -race tests and gives stable greedy tokens across thread counts. Its
// output layer is untied: with random weights a tied one makes the model
// predict its input token forever, which would make greedy tests weak.
func TinySpec(seed uint64) Spec {
	return Spec{Name: "mcpd-tiny", Layers: 2, Dim: 64, Heads: 4, KVHeads: 2, FF: 128,
		Vocab: 320, Context: 512, TiedOutput: false, Weights: F32, Seed: seed}
}

// Bench135MSpec is the benchmark shape shared across the project (see
// docs/native.md): ≈134M parameters, 12 layers, n_embd 768, 12 heads, FFN
// 2048, vocab 32000, untied output, context 2048, Q8_0 weights.
func Bench135MSpec(seed uint64) Spec {
	return Spec{Name: "mcpd-bench-135m", Layers: 12, Dim: 768, Heads: 12, KVHeads: 12, FF: 2048,
		Vocab: 32000, Context: 2048, TiedOutput: false, Weights: Q8_0, Seed: seed}
}

// Bench360MSpec is a larger realistic shape (SmolLM2-360M-like: GQA, tied).
func Bench360MSpec(seed uint64) Spec {
	return Spec{Name: "mcpd-bench-360m", Layers: 32, Dim: 960, Heads: 15, KVHeads: 5, FF: 2560,
		Vocab: 49152, Context: 2048, TiedOutput: true, Weights: Q8_0, Seed: seed}
}

// Token ids of the special tokens every generated vocabulary starts with.
const (
	TokenUnk = 0
	TokenBOS = 1
	TokenEOS = 2
	// firstByteToken is <0x00>; byte b is token firstByteToken+b.
	firstByteToken = 3
	numFixedTokens = firstByteToken + 256
)

// Validate reports a shape llama.cpp cannot run.
func (s Spec) Validate() error {
	switch {
	case s.Layers < 1 || s.Dim < 1 || s.Heads < 1 || s.KVHeads < 1 || s.FF < 1 || s.Context < 1:
		return fmt.Errorf("gguf: spec %q: every size must be positive", s.Name)
	case s.Dim%s.Heads != 0:
		return fmt.Errorf("gguf: spec %q: dim %d is not a multiple of heads %d", s.Name, s.Dim, s.Heads)
	case s.Heads%s.KVHeads != 0:
		return fmt.Errorf("gguf: spec %q: heads %d is not a multiple of kv heads %d", s.Name, s.Heads, s.KVHeads)
	case (s.Dim/s.Heads)%2 != 0:
		return fmt.Errorf("gguf: spec %q: head size %d must be even for RoPE", s.Name, s.Dim/s.Heads)
	case s.Vocab < numFixedTokens+1:
		return fmt.Errorf("gguf: spec %q: vocab %d must exceed %d (special + byte tokens)", s.Name, s.Vocab, numFixedTokens)
	case s.Weights != F32 && s.Weights != F16 && s.Weights != Q8_0:
		return fmt.Errorf("gguf: spec %q: weight type %v not supported by the writer", s.Name, s.Weights)
	}
	if s.Weights == Q8_0 && (s.Dim%32 != 0 || s.FF%32 != 0) {
		return fmt.Errorf("gguf: spec %q: Q8_0 needs dim and FF multiples of 32", s.Name)
	}
	return nil
}

// Params is the number of weights the spec produces.
func (s Spec) Params() int64 {
	kv := int64(s.Dim / s.Heads * s.KVHeads)
	d, ff, v := int64(s.Dim), int64(s.FF), int64(s.Vocab)
	layer := d*d*2 + d*kv*2 + 3*d*ff + 2*d
	n := v*d + d + int64(s.Layers)*layer
	if !s.TiedOutput {
		n += v * d
	}
	return n
}

// Vocabulary returns the generated vocabulary: <unk>, <s>, </s>, the 256
// byte tokens, then single characters and word pieces in a fixed order, so
// the SentencePiece-style tokenizer can encode any text (bytes fall back to
// byte tokens).
func Vocabulary(n int) (tokens []string, scores []float32, types []int32) {
	tokens = make([]string, 0, n)
	scores = make([]float32, 0, n)
	types = make([]int32, 0, n)
	add := func(tok string, score float32, typ int32) {
		tokens = append(tokens, tok)
		scores = append(scores, score)
		types = append(types, typ)
	}
	// Token types: 1 normal, 2 unknown, 3 control, 6 byte.
	add("<unk>", 0, 2)
	add("<s>", 0, 3)
	add("</s>", 0, 3)
	for b := 0; b < 256; b++ {
		add(fmt.Sprintf("<0x%02X>", b), 0, 6)
	}
	seen := make(map[string]bool, n)
	for _, t := range tokens {
		seen[t] = true
	}
	const letters = "abcdefghijklmnopqrstuvwxyz"
	var singles []string
	singles = append(singles, "▁")
	for _, c := range letters + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:;'\"-()" {
		singles = append(singles, string(c))
	}
	// Word pieces: "▁x", then "xy", "▁xy", then three letters; enough
	// for the 49152-token shape (26 + 676 + 676 + 17576 + 17576 > 36000).
	next := func(yield func(string) bool) {
		for _, s := range singles {
			if !yield(s) {
				return
			}
		}
		for _, a := range letters {
			if !yield("▁" + string(a)) {
				return
			}
		}
		for _, a := range letters {
			for _, b := range letters {
				if !yield(string(a)+string(b)) || !yield("▁"+string(a)+string(b)) {
					return
				}
			}
		}
		for _, a := range letters {
			for _, b := range letters {
				for _, c := range letters {
					w := string(a) + string(b) + string(c)
					if !yield(w) || !yield("▁"+w) {
						return
					}
				}
			}
		}
		for i := 0; ; i++ {
			if !yield(fmt.Sprintf("▁w%d", i)) {
				return
			}
		}
	}
	rank := 0
	for tok := range next {
		if len(tokens) >= n {
			break
		}
		if seen[tok] {
			continue
		}
		seen[tok] = true
		// Longer pieces score higher so the tokenizer prefers them, and
		// earlier pieces beat later ones of the same length.
		rank++
		add(tok, float32(len([]rune(tok)))*100-float32(rank)*1e-3, 1)
	}
	return tokens, scores, types
}

// File builds the GGUF description of a generated model. Tensor data is
// produced lazily by Fill from the seed and the tensor's name, so each
// tensor's bytes are independent of the others and of the tensor order.
func (s Spec) File() (*File, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	tokens, scores, types := Vocabulary(s.Vocab)
	headDim := s.Dim / s.Heads
	fileType := map[TensorType]uint32{F32: 0, F16: 1, Q8_0: 7}[s.Weights]
	kvs := []KV{
		{"general.architecture", "llama"},
		{"general.name", s.Name},
		{"general.alignment", uint32(DefaultAlignment)},
		{"general.file_type", fileType},
		{"llama.context_length", uint32(s.Context)},
		{"llama.embedding_length", uint32(s.Dim)},
		{"llama.block_count", uint32(s.Layers)},
		{"llama.feed_forward_length", uint32(s.FF)},
		{"llama.attention.head_count", uint32(s.Heads)},
		{"llama.attention.head_count_kv", uint32(s.KVHeads)},
		{"llama.attention.layer_norm_rms_epsilon", float32(1e-5)},
		{"llama.rope.dimension_count", uint32(headDim)},
		{"llama.rope.freq_base", float32(10000)},
		{"llama.vocab_size", uint32(s.Vocab)},
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.tokens", tokens},
		{"tokenizer.ggml.scores", scores},
		{"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.unknown_token_id", uint32(TokenUnk)},
		{"tokenizer.ggml.bos_token_id", uint32(TokenBOS)},
		{"tokenizer.ggml.eos_token_id", uint32(TokenEOS)},
		{"tokenizer.ggml.add_bos_token", true},
		{"tokenizer.ggml.add_eos_token", false},
	}
	if s.ChatTemplate != "" {
		kvs = append(kvs, KV{"tokenizer.chat_template", s.ChatTemplate})
	}
	d, ff, v := int64(s.Dim), int64(s.FF), int64(s.Vocab)
	kvDim := int64(headDim * s.KVHeads)
	var ts []Tensor
	// Uniform in ±sqrt(3/fan_in) has variance 1/fan_in: activations keep
	// their scale through the layers, so the tiny model's greedy output
	// varies with the prompt instead of collapsing to one token.
	weight := func(name string, in, out int64) {
		ts = append(ts, s.tensor(name, []int64{in, out}, s.Weights, math.Sqrt(3/float64(in))))
	}
	norm := func(name string) {
		ts = append(ts, Tensor{Name: name, Dims: []int64{d}, Type: F32, Fill: constF32(int(d), 1)})
	}
	ts = append(ts, s.tensor("token_embd.weight", []int64{d, v}, s.Weights, math.Sqrt(3)))
	norm("output_norm.weight")
	if !s.TiedOutput {
		weight("output.weight", d, v)
	}
	for l := 0; l < s.Layers; l++ {
		p := fmt.Sprintf("blk.%d.", l)
		norm(p + "attn_norm.weight")
		weight(p+"attn_q.weight", d, d)
		weight(p+"attn_k.weight", d, kvDim)
		weight(p+"attn_v.weight", d, kvDim)
		weight(p+"attn_output.weight", d, d)
		norm(p + "ffn_norm.weight")
		weight(p+"ffn_gate.weight", d, ff)
		weight(p+"ffn_up.weight", d, ff)
		weight(p+"ffn_down.weight", ff, d)
	}
	return &File{KVs: kvs, Tensors: ts}, nil
}

// WriteModel writes the model described by s to w.
func WriteModel(w io.Writer, s Spec) error {
	f, err := s.File()
	if err != nil {
		return err
	}
	return Write(w, f)
}

// tensor returns a tensor of seeded uniform values in ±scale.
func (s Spec) tensor(name string, dims []int64, typ TensorType, scale float64) Tensor {
	h := fnv.New64a()
	h.Write([]byte(name))
	seed := s.Seed ^ h.Sum64()
	n := dims[0] * dims[1]
	return Tensor{Name: name, Dims: dims, Type: typ, Fill: func(w io.Writer) error {
		rng := splitmix64(seed)
		return writeValues(w, typ, n, func() float32 {
			// 53 random bits → [0,1) → [-scale, scale).
			u := float64(rng.next()>>11) / (1 << 53)
			return float32((2*u - 1) * scale)
		})
	}}
}

func constF32(n int, v float32) func(io.Writer) error {
	return func(w io.Writer) error {
		return writeValues(w, F32, int64(n), func() float32 { return v })
	}
}

// writeValues encodes n values from next as typ, a chunk at a time.
func writeValues(w io.Writer, typ TensorType, n int64, next func() float32) error {
	const chunk = 32 * 1024 // a multiple of the Q8_0 block
	vals := make([]float32, 0, chunk)
	var out []byte
	for done := int64(0); done < n; {
		k := min(n-done, chunk)
		vals = vals[:0]
		for i := int64(0); i < k; i++ {
			vals = append(vals, next())
		}
		out = out[:0]
		switch typ {
		case F32:
			for _, x := range vals {
				out = binary.LittleEndian.AppendUint32(out, math.Float32bits(x))
			}
		case F16:
			for _, x := range vals {
				out = binary.LittleEndian.AppendUint16(out, Float16(x))
			}
		case Q8_0:
			out = appendQ8_0(out, vals)
		default:
			return fmt.Errorf("gguf: cannot encode %v", typ)
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// appendQ8_0 quantizes vals (a multiple of 32) the way ggml's reference
// quantize_row_q8_0 does: d = max|x|/127, q = round(x/d), d stored as f16.
func appendQ8_0(out []byte, vals []float32) []byte {
	for b := 0; b+32 <= len(vals); b += 32 {
		blk := vals[b : b+32]
		var amax float32
		for _, x := range blk {
			amax = max(amax, float32(math.Abs(float64(x))))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		out = binary.LittleEndian.AppendUint16(out, Float16(d))
		for _, x := range blk {
			out = append(out, byte(int8(math.Round(float64(x*id)))))
		}
	}
	return out
}

// Float16 converts f to IEEE 754 binary16 bits, rounding to nearest even.
func Float16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case b&0x7fffffff == 0:
		return sign
	case int32(b>>23&0xff) == 0xff: // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp >= 0x1f:
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - exp)
		half := uint32(1) << (shift - 1)
		r := mant >> shift
		rem := mant & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, which is the correct rounding
	}
	return sign | uint16(r)
}

// splitmix64 is a tiny, fast, well-mixed PRNG; its output depends only on
// the seed, which is what makes generated files reproducible.
type splitmix64 uint64

func (s *splitmix64) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}
