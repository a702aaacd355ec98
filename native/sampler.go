package native

/*
#include <stdlib.h>
#include "mcpd_native.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"unsafe"
)

// ErrGrammar: a grammar did not parse, or admits no token at this point
// (the model's vocabulary cannot continue it).
var ErrGrammar = errors.New("native: grammar")

// SamplerParams choose how the next token is picked. The zero value is
// greedy (argmax) with no penalty.
type SamplerParams struct {
	Temperature   float32 // <= 0: greedy
	TopK          int     // 0: off
	TopP          float32 // 0 or >= 1: off
	MinP          float32 // 0: off
	RepeatPenalty float32 // 0 or 1: off
	RepeatLastN   int     // tokens the penalty looks back over (0: 64)
	Seed          uint32
	// Grammar, in llama.cpp's GBNF with root rule "root", constrains every
	// sampled token (backends/grammar makes one from a JSON Schema). It
	// needs Model, whose vocabulary it is matched against.
	Grammar string
	Model   *Model
}

// Sampler is a llama.cpp sampler chain. It keeps per-sequence state (the
// repeat-penalty window, the random stream), so use one per sequence.
type Sampler struct {
	mu  sync.Mutex
	ptr *C.struct_llama_sampler
	// With a grammar: its sampler, kept out of the chain so that Accept
	// (prompt tokens for the penalty) never reaches it, and a candidate
	// buffer of nVocab entries.
	grammar *C.struct_llama_sampler
	buf     *C.llama_token_data
	nVocab  int
	// argmax: greedy with no penalty and no grammar, sampled by
	// mcpd_argmax instead of the chain (37 µs → a few µs a token on a
	// 32000-token vocabulary; docs/native.md). The chain then keeps no
	// state that Accept could change.
	argmax bool
}

// NewSampler builds a sampler chain: repeat penalty, then either greedy or
// top-k → top-p → min-p → temperature → a draw seeded with Seed.
func NewSampler(p SamplerParams) (*Sampler, error) {
	bad := func(f float32) bool { return math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) }
	switch {
	case bad(p.Temperature) || bad(p.TopP) || bad(p.MinP) || bad(p.RepeatPenalty):
		return nil, fmt.Errorf("%w: sampler parameter is NaN or infinite", ErrInvalid)
	case p.TopK < 0 || p.TopP < 0 || p.MinP < 0 || p.MinP > 1 || p.RepeatPenalty < 0 || p.RepeatLastN < 0:
		return nil, fmt.Errorf("%w: negative sampler parameter", ErrInvalid)
	}
	if p.RepeatLastN == 0 {
		p.RepeatLastN = 64
	}
	ptr := C.mcpd_sampler(C.bool(p.Temperature <= 0), C.float(p.Temperature), C.int32_t(p.TopK), C.float(p.TopP),
		C.float(p.MinP), C.float(p.RepeatPenalty), C.int32_t(p.RepeatLastN), C.uint32_t(p.Seed))
	if ptr == nil {
		return nil, fmt.Errorf("%w: sampler", ErrInvalid)
	}
	s := &Sampler{ptr: ptr, argmax: p.Temperature <= 0 && (p.RepeatPenalty <= 0 || p.RepeatPenalty == 1) && p.Grammar == ""}
	if p.Grammar != "" {
		if err := s.setGrammar(p.Model, p.Grammar); err != nil {
			C.llama_sampler_free(ptr)
			return nil, err
		}
	}
	return s, nil
}

func (s *Sampler) setGrammar(m *Model, gbnf string) error {
	if m == nil {
		return fmt.Errorf("%w: a grammar needs the model", ErrInvalid)
	}
	cg, root := C.CString(gbnf), C.CString("root")
	defer C.free(unsafe.Pointer(cg))
	defer C.free(unsafe.Pointer(root))
	return m.read(func() error {
		s.grammar = C.llama_sampler_init_grammar(m.vocab, cg, root)
		if s.grammar == nil {
			return fmt.Errorf("%w: does not parse", ErrGrammar)
		}
		s.nVocab = m.nVocab
		s.buf = (*C.llama_token_data)(C.malloc(C.size_t(m.nVocab) * C.size_t(unsafe.Sizeof(C.llama_token_data{}))))
		return nil
	})
}

// Sample picks a token from the logits at batch index i of c's last Decode
// and records it in the sampler's history.
func (s *Sampler) Sample(c *Context, i int) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr == nil {
		return 0, fmt.Errorf("sampler: %w", ErrClosed)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// llama.cpp aborts on an index without logits: check first.
	if err := c.checkOutput(i); err != nil {
		return 0, err
	}
	if s.grammar != nil {
		if s.nVocab != c.model.nVocab {
			return 0, fmt.Errorf("%w: grammar of another model", ErrInvalid)
		}
		t := C.mcpd_sample_grammar(s.ptr, s.grammar, c.ptr, C.int32_t(i), C.int32_t(s.nVocab), s.buf)
		if t < 0 {
			return 0, fmt.Errorf("%w: no token continues the grammar", ErrGrammar)
		}
		return Token(t), nil
	}
	if s.argmax {
		t := C.mcpd_argmax(c.ptr, C.int32_t(i), C.int32_t(c.model.nVocab))
		if t < 0 {
			return 0, fmt.Errorf("%w: no logits at %d", ErrInvalid, i)
		}
		return Token(t), nil
	}
	return Token(C.llama_sampler_sample(s.ptr, c.ptr, C.int32_t(i))), nil
}

// Accept records t (e.g. a prompt token) in the sampler's history, which
// the repeat penalty looks at.
func (s *Sampler) Accept(t Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr == nil {
		return fmt.Errorf("sampler: %w", ErrClosed)
	}
	C.llama_sampler_accept(s.ptr, C.llama_token(t))
	return nil
}

// Reset clears the history and restarts the random stream.
func (s *Sampler) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr == nil {
		return fmt.Errorf("sampler: %w", ErrClosed)
	}
	C.llama_sampler_reset(s.ptr)
	if s.grammar != nil {
		C.llama_sampler_reset(s.grammar)
	}
	return nil
}

// Close frees the sampler.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr == nil {
		return fmt.Errorf("sampler: %w", ErrClosed)
	}
	C.llama_sampler_free(s.ptr)
	s.ptr = nil
	if s.grammar != nil {
		C.llama_sampler_free(s.grammar)
		C.free(unsafe.Pointer(s.buf))
		s.grammar, s.buf = nil, nil
	}
	return nil
}
