package gguf

import (
	"fmt"
	"strings"
)

// The checks beyond well-formedness: a file llama.cpp would load must
// carry the keys and tensors of its architecture, with consistent shapes.

// checkSemantics checks metadata llama.cpp uses unchecked: token arrays are
// read with asserting getters and scores/types are indexed up to the token
// count, so a short array would be read out of bounds.
func checkSemantics(info *Info) error {
	arch, ok := info.KV["general.architecture"]
	if !ok || arch.Type != TypeString || arch.Str == "" {
		return fmt.Errorf("%w: general.architecture missing or not a string", ErrUnsupported)
	}
	tok, ok := info.KV["tokenizer.ggml.tokens"]
	if ok {
		if tok.Type != TypeArray || tok.ElemType != TypeString || tok.Len == 0 {
			return fmt.Errorf("%w: tokenizer.ggml.tokens must be a non-empty string array", ErrCorrupt)
		}
		for key, et := range map[string]ValueType{"tokenizer.ggml.scores": TypeFloat32, "tokenizer.ggml.token_type": TypeInt32} {
			if v, ok := info.KV[key]; ok && (v.Type != TypeArray || v.ElemType != et || v.Len != tok.Len) {
				return fmt.Errorf("%w: %s must be a %v array of %d entries", ErrCorrupt, key, et, tok.Len)
			}
		}
	}
	if v, ok := info.KV["tokenizer.ggml.merges"]; ok && (v.Type != TypeArray || v.ElemType != TypeString) {
		return fmt.Errorf("%w: tokenizer.ggml.merges must be a string array", ErrCorrupt)
	}
	for key, v := range info.KV {
		if strings.HasPrefix(key, "split.") && v.Type != TypeUint16 && v.Type != TypeString {
			return fmt.Errorf("%w: %s has type %v", ErrCorrupt, key, v.Type)
		}
	}
	if arch.Str == "llama" {
		return checkLlama(info)
	}
	return nil
}

// checkLlama checks the hyperparameters that size the compute graph.
func checkLlama(info *Info) error {
	get := func(key string) (int64, error) {
		u, ok := info.Uint(key)
		if !ok || u == 0 || u > 1<<24 {
			return 0, fmt.Errorf("%w: %s missing or out of range", ErrUnsupported, key)
		}
		return int64(u), nil
	}
	dim, err := get("llama.embedding_length")
	if err != nil {
		return err
	}
	heads, err := get("llama.attention.head_count")
	if err != nil {
		return err
	}
	kvHeads := heads
	if _, ok := info.KV["llama.attention.head_count_kv"]; ok {
		if kvHeads, err = get("llama.attention.head_count_kv"); err != nil {
			return err
		}
	}
	if _, err := get("llama.block_count"); err != nil {
		return err
	}
	if dim%heads != 0 || heads%kvHeads != 0 {
		return fmt.Errorf("%w: embedding %d, heads %d, kv heads %d do not divide", ErrUnsupported, dim, heads, kvHeads)
	}
	if _, ok := info.KV["tokenizer.ggml.tokens"]; !ok {
		return fmt.Errorf("%w: no tokenizer.ggml.tokens", ErrUnsupported)
	}
	return nil
}
