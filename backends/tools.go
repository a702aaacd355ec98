package backends

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Device tools (docs/protocol.md §16). A tool-capable generation is the
// plain one with Request.Tools set: when the model calls a tool the
// generation ends with Result.Call set; the caller runs the call, appends
// the call (an assistant Message with ToolCall) and its result (a RoleTool
// Message) to the conversation and generates again. The engine keeps no
// state between the two generations, so the caller decides everything
// else: how many calls, how long a tool may take, what a failure says.

// Tool is a tool the model may call.
type Tool struct {
	Name        string
	Description string
	// Schema is the JSON Schema of the arguments (an object schema of the
	// §11.4.1 subset, minified); nil: no arguments.
	Schema json.RawMessage
}

// ToolChoice says whether the model must call a tool.
type ToolChoice uint8

const (
	// ToolAuto: the model answers or calls a tool, as it likes.
	ToolAuto ToolChoice = iota
	// ToolRequired: the model must call one of the tools. Only engines that
	// constrain sampling can promise it (the in-process engine); others
	// treat it as ToolAuto.
	ToolRequired
)

// ToolCall is the model calling a tool.
type ToolCall struct {
	// Tool is the index in Request.Tools; -1 when the model named a tool
	// that is not there (a model sampled without a grammar may).
	Tool int
	Name string
	// Args are the arguments as minified JSON, 7-bit ASCII (non-ASCII
	// characters escaped): "{}" for none.
	Args json.RawMessage
}

// ASCIIJSON minifies a JSON value and escapes every non-ASCII character as
// \uXXXX, so that a device reads it with a byte scanner (§11.4.1).
func ASCIIJSON(v []byte) (json.RawMessage, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, v); err != nil {
		return nil, fmt.Errorf("%w: tool arguments: %w", ErrFailed, err)
	}
	in := b.Bytes()
	out := make([]byte, 0, len(in))
	for len(in) > 0 {
		r, n := utf8.DecodeRune(in)
		switch {
		case r < 0x80:
			out = append(out, in[0])
		case r > 0xFFFF:
			r1, r2 := (r-0x10000)>>10+0xD800, (r-0x10000)&0x3FF+0xDC00
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		in = in[n:]
	}
	return out, nil
}
