// Package backends puts the inference engines mcpd can use — the
// in-process llama.cpp engine and a local Ollama server — behind one
// interface, and chooses between them.
//
// The daemon talks only to Backend. An engine streams its output through a
// callback on the caller's goroutine, so the daemon controls pacing (a slow
// UART slows the callback, and through it the engine) and cancellation
// (through ctx) without extra goroutines or channels per token.
package backends

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Errors an engine returns, wrapped with detail; test with errors.Is. The
// daemon maps them to protocol error codes.
var (
	// ErrModelNotFound: the named model is not available to this engine.
	ErrModelNotFound = errors.New("backends: model not found")
	// ErrUnavailable: the engine cannot take requests now (not loaded,
	// unreachable, circuit open). Retryable elsewhere or later.
	ErrUnavailable = errors.New("backends: engine unavailable")
	// ErrBusy: the engine's own queue is full. Retryable.
	ErrBusy = errors.New("backends: engine busy")
	// ErrPromptTooLong: the prompt does not fit the context.
	ErrPromptTooLong = errors.New("backends: prompt exceeds the context")
	// ErrFailed: the engine failed mid-request (stream cut, decode error).
	ErrFailed = errors.New("backends: engine failed")
	// ErrClosed: the engine was closed.
	ErrClosed = errors.New("backends: engine closed")
	// ErrUnsupported: the request asks for something this engine cannot
	// do (a GBNF grammar of Ollama).
	ErrUnsupported = errors.New("backends: not supported by this engine")
)

// Role of a chat message.
type Role string

const (
	RoleSystem    Role = "system"
	RoleUser      Role = "user"
	RoleAssistant Role = "assistant"
	RoleTool      Role = "tool" // a tool's result (Content) for the call of the assistant turn before it
)

// Message is one turn of a conversation.
type Message struct {
	Role    Role
	Content string
	// ToolCall is set on an assistant turn that called a tool (tools.go).
	ToolCall *ToolCall
	// Tokens, on an assistant turn, are the token ids the engine generated
	// for Content (the turn's Result.Generated). The in-process engine
	// evaluates the longest run of them whose text Content starts with
	// instead of tokenising that text again: its KV cache holds the tokens
	// it generated, and a new tokenisation of the same text often differs
	// from them (docs/caching.md). Each id's text is checked against
	// Content, so ids of another model or none at all are harmless;
	// engines that tokenise for themselves (Ollama) ignore them.
	Tokens []int32
}

// Options tune one generation. Zero values mean "the engine's default",
// except where a Set flag says the zero is meant (temperature 0 = greedy).
type Options struct {
	MaxTokens      int     // 0: engine default
	Temperature    float32 // used when TemperatureSet; 0 = greedy
	TemperatureSet bool
	TopK           int     // 0: off/default
	TopP           float32 // 0: off/default
	MinP           float32 // 0: off/default
	RepeatPenalty  float32 // 0: off/default (1 = none)
	Seed           uint32
	SeedSet        bool
	Stop           []string
	ContextSize    int // 0: engine default
	// Constrained answers (backends/grammar, docs/protocol.md §11.4.1).
	// Grammar is GBNF with root rule "root", which the in-process engine
	// samples under; Schema is the JSON Schema it came from, if any, which
	// Ollama takes as `format`. An engine that cannot honour the one it is
	// given returns ErrUnsupported rather than an unconstrained answer.
	Grammar string
	Schema  json.RawMessage
}

// Request is one generation: the conversation so far (the last message is
// the new user turn) and its options.
type Request struct {
	Model    string // "" = the engine's default model
	Messages []Message
	Options  Options
	// Tools the model may call (tools.go); nil: none. An engine that
	// cannot offer tools returns ErrUnsupported.
	Tools      []Tool
	ToolChoice ToolChoice
}

// StopReason says why generation ended.
type StopReason uint8

const (
	StopEOS     StopReason = iota // the model ended its answer
	StopLength                    // MaxTokens reached
	StopContext                   // the context is full
	StopString                    // a stop sequence matched
)

// Result is what a finished generation reports.
type Result struct {
	Tokens       int           // tokens generated
	PromptTokens int           // prompt tokens
	PromptCached int           // of those, found in the engine's cache, not evaluated again
	TTFT         time.Duration // from the call to the first piece
	Duration     time.Duration // from the call to the last piece
	Stop         StopReason
	// Call is set when the generation ended in a tool call instead of an
	// answer: nothing of the call reached emit.
	Call *ToolCall
	// Generated are the ids of the tokens generated, in order, when the
	// engine has them (the in-process engine; nil for Ollama): the caller
	// keeps them with the answer as Message.Tokens.
	Generated []int32
}

// Emit receives generated text in order. Pieces never split a UTF-8
// character. Returning an error stops generation; Generate then returns
// that error.
type Emit func(piece []byte) error

// ModelInfo describes a model an engine can run.
type ModelInfo struct {
	Name          string
	ContextLength int
	Parameters    int64
	Quantization  string
}

// Backend is an inference engine.
type Backend interface {
	// Name is a short, stable identifier ("llama.cpp", "ollama").
	Name() string
	// Generate runs req, calling emit for each piece of output, and returns
	// when generation ends, ctx is done, or emit fails. It returns ctx's
	// error promptly (within one decode step) after cancellation.
	Generate(ctx context.Context, req Request, emit Emit) (Result, error)
	// Model describes a model; "" is the default model.
	Model(ctx context.Context, name string) (ModelInfo, error)
	// Healthy reports nil when the engine can take requests.
	Healthy(ctx context.Context) error
	// Close releases the engine; later calls return ErrClosed.
	Close() error
}
