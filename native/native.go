// Package native is mcpd's thin, safe cgo binding to llama.cpp (built from
// the sources in github.com/ollama/ollama, pinned in go.mod).
//
// It hides C entirely: callers see Models, Contexts, Batches and Samplers,
// never C pointers. Every object has a Close; a second Close and any use
// after Close return ErrClosed instead of touching freed memory. Model
// files pass the pure-Go validator in native/gguf before llama.cpp opens
// them, because llama.cpp aborts the process on some malformed files.
//
// Build: `make` copies the llama.cpp headers into native/include (they are
// not committed) and sets CGO_CFLAGS/CGO_CXXFLAGS to -O3 -march=x86-64-v3 on
// amd64; see docs/native.md (and docs/cross.md for the ARM builds). Such a
// binary checks the CPU at Load (CheckCPU) and refuses a CPU that lacks the
// instructions it was compiled for with a clear error rather than dying on
// an illegal instruction.
package native

/*
#cgo CPPFLAGS: -I${SRCDIR}/include
#include <stdlib.h>
#include "mcpd_native.h"
*/
import "C"

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	// The llama.cpp and ggml sources, compiled by cgo. Only this package
	// is imported: github.com/ollama/ollama/llama would drag in code that
	// needs files module zips omit.
	_ "github.com/ollama/ollama/llama/llama.cpp/src"
)

// Errors, wrapped with detail; test with errors.Is.
var (
	// ErrClosed: the object was closed.
	ErrClosed = errors.New("native: closed")
	// ErrCPU: the CPU lacks instructions the binary was compiled for.
	ErrCPU = errors.New("native: CPU unsupported by this build")
	// ErrModel: llama.cpp could not load the model file.
	ErrModel = errors.New("native: cannot load model")
	// ErrContextFull: no room left in the KV cache for the batch.
	ErrContextFull = errors.New("native: context full")
	// ErrDecode: llama_decode failed.
	ErrDecode = errors.New("native: decode failed")
	// ErrInvalid: an argument out of range (token, sequence, batch index).
	ErrInvalid = errors.New("native: invalid argument")
)

// Token is a vocabulary id.
type Token int32

// setup silences llama.cpp's stderr output (routing it to slog) and
// initialises the backend. Both calls are idempotent, so setup runs on
// every Load instead of keeping package state.
func setup() {
	C.mcpd_log_to_go()
	C.llama_backend_init()
}

// mcpdLog receives llama.cpp and ggml log lines (any thread) and passes them
// to slog at debug level: they are diagnostics for developers, and an
// appliance log should not carry llama.cpp's load chatter by default.
//
//export mcpdLog
func mcpdLog(level C.int, text *C.char) {
	l := slog.Default()
	if !l.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	msg := strings.TrimRight(C.GoString(text), "\n")
	if strings.TrimSpace(msg) == "" {
		return
	}
	l.Debug(msg, "from", "llama.cpp", "level", int(level))
}
