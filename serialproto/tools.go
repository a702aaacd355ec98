package serialproto

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The bodies of the device tools (docs/protocol.md §16): TOOLS declares a
// device's tools, TOOL_CALL is the model calling one (a chunk of the
// answer stream), TOOL_RESULT is the device's answer.

// Limits of §16.
const (
	MaxTools        = 16   // tools in one TOOLS message
	MaxToolName     = 32   // bytes of a tool's name: a-z 0-9 _ -
	MaxToolDesc     = 160  // bytes of its one-line description
	MaxToolSchema   = 1024 // bytes of its argument schema
	MaxToolResult   = 1024 // bytes of a result the model reads
	ToolCallHeader  = 4    // chunk, call, tool: what a TOOL_CALL body holds before its arguments
	ToolResultFixed = 2    // call, status
)

// Status of a TOOL_RESULT.
const (
	ToolOK     uint8 = 0
	ToolFailed uint8 = 1 // the device's handler failed; the result says why
)

// ToolDecl is one declared tool: what the model reads about it and the
// JSON Schema (of the §11.4.1 subset, type object) of its arguments;
// an empty schema means no arguments.
type ToolDecl struct {
	Name        string
	Description string
	Schema      []byte
}

// Tools is the body of TOOLS: 1..16 declarations.
type Tools struct {
	Tools []ToolDecl
}

func (*Tools) Command() Command { return CmdTools }

// ValidToolName reports whether n is a tool name of §16: 1..32 bytes of
// a-z 0-9 _ -.
func ValidToolName(n string) bool {
	if n == "" || len(n) > MaxToolName {
		return false
	}
	for _, c := range []byte(n) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (m *Tools) check() error {
	if len(m.Tools) == 0 || len(m.Tools) > MaxTools {
		return malformed(CmdTools, "%d tools, want 1..%d", len(m.Tools), MaxTools)
	}
	seen := make(map[string]bool, len(m.Tools))
	for i, t := range m.Tools {
		switch {
		case !ValidToolName(t.Name):
			return malformed(CmdTools, "tool %d: name %.40q is not 1..%d of a-z 0-9 _ -", i, t.Name, MaxToolName)
		case seen[t.Name]:
			return malformed(CmdTools, "tool %d: name %q declared twice", i, t.Name)
		case len(t.Description) > MaxToolDesc || !utf8.ValidString(t.Description) || strings.ContainsAny(t.Description, "\r\n"):
			return malformed(CmdTools, "tool %s: description must be one line of UTF-8, at most %d bytes", t.Name, MaxToolDesc)
		case len(t.Schema) > MaxToolSchema || !utf8.Valid(t.Schema):
			return malformed(CmdTools, "tool %s: schema must be UTF-8, at most %d bytes", t.Name, MaxToolSchema)
		}
		seen[t.Name] = true
	}
	return nil
}

func (m *Tools) AppendBody(dst []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return dst, err
	}
	dst = append(dst, byte(len(m.Tools)))
	for _, t := range m.Tools {
		dst = append(append(dst, byte(len(t.Name))), t.Name...)
		dst = append(append(dst, byte(len(t.Description))), t.Description...)
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(t.Schema)))
		dst = append(dst, t.Schema...)
	}
	return dst, nil
}

func (m *Tools) UnmarshalBody(b []byte) error {
	*m = Tools{}
	if len(b) < 1 {
		return malformed(CmdTools, "empty body")
	}
	n := int(b[0])
	if n == 0 || n > MaxTools {
		return malformed(CmdTools, "%d tools, want 1..%d", n, MaxTools)
	}
	b = b[1:]
	take := func(size int) ([]byte, bool) {
		if len(b) < size {
			return nil, false
		}
		v := b[:size]
		b = b[size:]
		return v, true
	}
	m.Tools = make([]ToolDecl, 0, n)
	for i := range n {
		var t ToolDecl
		l, ok := take(1)
		if !ok {
			return malformed(CmdTools, "tool %d: name truncated", i)
		}
		name, ok := take(int(l[0]))
		if !ok {
			return malformed(CmdTools, "tool %d: name truncated", i)
		}
		l, ok = take(1)
		if !ok {
			return malformed(CmdTools, "tool %d: description truncated", i)
		}
		desc, ok := take(int(l[0]))
		if !ok {
			return malformed(CmdTools, "tool %d: description truncated", i)
		}
		l, ok = take(2)
		if !ok {
			return malformed(CmdTools, "tool %d: schema length truncated", i)
		}
		schema, ok := take(int(binary.BigEndian.Uint16(l)))
		if !ok {
			return malformed(CmdTools, "tool %d: schema truncated", i)
		}
		t.Name, t.Description, t.Schema = string(name), string(desc), schema
		m.Tools = append(m.Tools, t)
	}
	if len(b) != 0 {
		return malformed(CmdTools, "%d bytes after the last tool", len(b))
	}
	return m.check()
}

// ToolCall is the model calling a device tool: a chunk of the answer
// stream (§8), numbered like TOKEN.
type ToolCall struct {
	Chunk uint16
	Call  uint8  // 0, 1, … within the request
	Tool  uint8  // index in the device's declaration
	Args  []byte // minified ASCII JSON of the tool's schema; may be empty
}

func (*ToolCall) Command() Command { return CmdToolCall }

func printableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7E {
			return false
		}
	}
	return true
}

func (m *ToolCall) AppendBody(dst []byte) ([]byte, error) {
	if m.Tool >= MaxTools || !printableASCII(m.Args) {
		return dst, malformed(CmdToolCall, "tool %d (want < %d), arguments must be printable ASCII", m.Tool, MaxTools)
	}
	dst = binary.BigEndian.AppendUint16(dst, m.Chunk)
	return append(append(dst, m.Call, m.Tool), m.Args...), nil
}

func (m *ToolCall) UnmarshalBody(b []byte) error {
	if len(b) < ToolCallHeader {
		return malformed(CmdToolCall, "%d bytes, need at least %d", len(b), ToolCallHeader)
	}
	*m = ToolCall{Chunk: binary.BigEndian.Uint16(b), Call: b[2], Tool: b[3], Args: b[4:]}
	if m.Tool >= MaxTools {
		return malformed(CmdToolCall, "tool index %d, at most %d tools", m.Tool, MaxTools)
	}
	if !printableASCII(m.Args) {
		return malformed(CmdToolCall, "arguments are not printable ASCII")
	}
	return nil
}

// ToolResult is a device's answer to a TOOL_CALL: a message of fragments
// under the INFER's seq.
type ToolResult struct {
	Call   uint8
	Status uint8  // ToolOK or ToolFailed
	Result []byte // UTF-8, at most MaxToolResult bytes: what the model reads
}

func (*ToolResult) Command() Command { return CmdToolResult }

func (m *ToolResult) check() error {
	switch {
	case m.Status > ToolFailed:
		return malformed(CmdToolResult, "status %d, want 0 OK or 1 FAILED", m.Status)
	case len(m.Result) > MaxToolResult:
		return fmt.Errorf("%w: TOOL_RESULT of %d bytes, at most %d", ErrTooLarge, len(m.Result), MaxToolResult)
	case !utf8.Valid(m.Result):
		return malformed(CmdToolResult, "result is not UTF-8")
	}
	return nil
}

func (m *ToolResult) AppendBody(dst []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return dst, err
	}
	return append(append(dst, m.Call, m.Status), m.Result...), nil
}

// UnmarshalBody decodes b; a result above MaxToolResult is ErrTooLarge
// (the daemon answers TOO_LARGE and ends the stream with TOOL_LIMIT, §16).
func (m *ToolResult) UnmarshalBody(b []byte) error {
	if len(b) < ToolResultFixed {
		return malformed(CmdToolResult, "%d bytes, need at least %d", len(b), ToolResultFixed)
	}
	*m = ToolResult{Call: b[0], Status: b[1], Result: b[2:]}
	return m.check()
}
