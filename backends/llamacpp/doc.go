// Package llamacpp is the in-process inference engine: llama.cpp, linked
// through cgo (package native), behind backends.Backend.
//
// One scheduler goroutine owns the llama.cpp context and runs continuous
// batching (scheduler.go); callers' goroutines tokenize, turn tokens into
// text and emit it (generate.go, text.go). Open checks that a GGUF file
// fits the memory available before loading it (fit.go). This is the only
// package of mcpd besides native that needs cgo: cmd/mcpd hands Starter
// to backends.Open, so nothing above backends links llama.cpp.
package llamacpp
