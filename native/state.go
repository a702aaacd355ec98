package native

/*
#include "mcpd_native.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// SequenceState returns llama.cpp's state of sequence seq (its KV cells:
// positions, keys and values), for SetSequenceState in a context of the
// same model and layout, in this process or after a restart. nil when the
// sequence holds nothing.
func (c *Context) SequenceState(seq int) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return nil, fmt.Errorf("context: %w", ErrClosed)
	}
	if seq < 0 || seq >= c.nSeq {
		return nil, fmt.Errorf("%w: sequence %d", ErrInvalid, seq)
	}
	if C.llama_memory_seq_pos_max(C.llama_get_memory(c.ptr), C.llama_seq_id(seq)) < 0 {
		return nil, nil
	}
	n := C.llama_state_seq_get_size(c.ptr, C.llama_seq_id(seq))
	if n == 0 {
		return nil, fmt.Errorf("%w: sequence %d state has no size", ErrModel, seq)
	}
	buf := make([]byte, int(n))
	if got := C.llama_state_seq_get_data(c.ptr, (*C.uint8_t)(unsafe.Pointer(&buf[0])), n, C.llama_seq_id(seq)); got != n {
		return nil, fmt.Errorf("%w: sequence %d state: %d of %d bytes", ErrModel, seq, uint64(got), uint64(n))
	}
	return buf, nil
}

// SequenceStateSize is the bytes SequenceState(seq) returns now (0 when
// the sequence holds nothing), without copying them.
func (c *Context) SequenceStateSize(seq int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return 0, fmt.Errorf("context: %w", ErrClosed)
	}
	if seq < 0 || seq >= c.nSeq {
		return 0, fmt.Errorf("%w: sequence %d", ErrInvalid, seq)
	}
	if C.llama_memory_seq_pos_max(C.llama_get_memory(c.ptr), C.llama_seq_id(seq)) < 0 {
		return 0, nil
	}
	return int(C.llama_state_seq_get_size(c.ptr, C.llama_seq_id(seq))), nil
}

// SetSequenceState replaces sequence seq's cells with a state SequenceState
// returned, and returns the positions it then holds (0..n-1). llama.cpp
// checks the state's layout against this context's (layers, types, sizes)
// and refuses a mismatch, leaving the sequence empty, but it aborts the
// process on some inconsistent states: pass only states written for this
// model, build and layout, and checked (backends/kvstate frames them).
func (c *Context) SetSequenceState(seq int, state []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return 0, fmt.Errorf("context: %w", ErrClosed)
	}
	if seq < 0 || seq >= c.nSeq || len(state) == 0 {
		return 0, fmt.Errorf("%w: sequence %d, %d bytes of state", ErrInvalid, seq, len(state))
	}
	mem := C.llama_get_memory(c.ptr)
	got := C.llama_state_seq_set_data(c.ptr, (*C.uint8_t)(unsafe.Pointer(&state[0])), C.size_t(len(state)), C.llama_seq_id(seq))
	if got == 0 {
		C.llama_memory_seq_rm(mem, C.llama_seq_id(seq), -1, -1)
		return 0, fmt.Errorf("%w: llama.cpp refused the state of sequence %d", ErrInvalid, seq)
	}
	lo, hi := C.llama_memory_seq_pos_min(mem, C.llama_seq_id(seq)), C.llama_memory_seq_pos_max(mem, C.llama_seq_id(seq))
	if int(got) != len(state) || lo != 0 || hi < 0 {
		C.llama_memory_seq_rm(mem, C.llama_seq_id(seq), -1, -1)
		return 0, fmt.Errorf("%w: sequence %d state: read %d of %d bytes, positions %d..%d", ErrInvalid, seq,
			uint64(got), len(state), int(lo), int(hi))
	}
	return int(hi) + 1, nil
}
