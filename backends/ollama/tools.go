package ollama

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/ollama/ollama/api"
)

// Device tools through Ollama's own tool calling (docs/protocol.md §16):
// the declarations become `tools` of /api/chat, a reply's `tool_calls`
// becomes the generation's Result.Call, and the result goes back as a
// `tool` role message naming the tool.

// chatTools converts the request's tools to Ollama's. Parameters are the
// tool's JSON Schema as Ollama reads it; a tool without arguments gets an
// empty object.
func chatTools(tools []backends.Tool) (api.Tools, error) {
	out := make(api.Tools, len(tools))
	for i, t := range tools {
		schema := []byte(t.Schema)
		if len(schema) == 0 {
			schema = []byte(`{"type":"object","properties":{}}`)
		}
		var p api.ToolFunctionParameters
		if err := json.Unmarshal(schema, &p); err != nil {
			return nil, fmt.Errorf("%w: tool %s: parameters: %w", backends.ErrUnsupported, t.Name, err)
		}
		out[i] = api.Tool{Type: "function", Function: api.ToolFunction{Name: t.Name, Description: t.Description, Parameters: p}}
	}
	return out, nil
}

// chatMessage converts one turn: an assistant turn that called a tool
// carries the call, a tool turn names the tool it answers (the call of the
// turn before it).
func chatMessage(m backends.Message, prev *backends.Message) (api.Message, error) {
	am := api.Message{Role: string(m.Role), Content: m.Content}
	switch {
	case m.ToolCall != nil:
		args := api.NewToolCallFunctionArguments()
		if err := json.Unmarshal(defaultArgs(m.ToolCall.Args), &args); err != nil {
			return am, fmt.Errorf("%w: tool call arguments: %w", backends.ErrFailed, err)
		}
		am.ToolCalls = []api.ToolCall{{Function: api.ToolCallFunction{Name: m.ToolCall.Name, Arguments: args}}}
	case m.Role == backends.RoleTool && prev != nil && prev.ToolCall != nil:
		am.ToolName = prev.ToolCall.Name
	}
	return am, nil
}

func defaultArgs(a json.RawMessage) []byte {
	if len(a) == 0 {
		return []byte("{}")
	}
	return a
}

// toolCall reads the first call of a reply. Ollama may return several at
// once; the daemon runs one call per generation, and the model, told the
// first one's result, asks again for what it still needs.
func toolCall(tools api.Tools, calls []api.ToolCall) (*backends.ToolCall, error) {
	c := calls[0].Function
	raw, err := json.Marshal(c.Arguments)
	if err != nil {
		return nil, fmt.Errorf("%w: tool call arguments: %w", backends.ErrFailed, err)
	}
	args, err := backends.ASCIIJSON(raw)
	if err != nil {
		return nil, err
	}
	call := &backends.ToolCall{Tool: -1, Name: c.Name, Args: args}
	for i, t := range tools {
		if t.Function.Name == c.Name {
			call.Tool = i
		}
	}
	return call, nil
}

// noToolsError says whether Ollama refused a request because the model
// cannot call tools ("… does not support tools", HTTP 400).
func noToolsError(msg string) bool { return strings.Contains(msg, "does not support tools") }
