package llamacpp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/grammar"
)

// Device tools in process (docs/protocol.md §16). The model is told the
// tools in a system turn and samples the start of its answer under
// backends/grammar's call grammar: either one complete call,
// <call>"NAME",ARGS</call> with ARGS of the tool's schema, or text that
// does not begin with "<". A call is held back from emit and ends the
// generation with Result.Call; the caller adds the call and a
// <result>…</result> turn and generates again.

// Generate implements Backend.
func (e *Engine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	if len(req.Tools) == 0 {
		// The history may hold an earlier request's calls and results
		// (the daemon keeps them, §16): written as when they were made.
		req.Messages = toolTurns(req.Messages)
		return e.generate(ctx, req, emit)
	}
	if req.Options.Grammar != "" {
		return backends.Result{}, fmt.Errorf("%w: tools with a grammar", backends.ErrUnsupported)
	}
	tools := make([]grammar.Tool, len(req.Tools))
	for i, t := range req.Tools {
		tools[i] = grammar.Tool{Name: t.Name, Description: t.Description}
		if len(t.Schema) > 0 {
			var err error
			if tools[i].Args, err = grammar.Parse(t.Schema); err != nil {
				return backends.Result{}, fmt.Errorf("%w: tool %s: %w", backends.ErrUnsupported, t.Name, err)
			}
		}
	}
	g, err := grammar.ToolGrammar(tools, req.ToolChoice == backends.ToolRequired)
	if err != nil {
		return backends.Result{}, fmt.Errorf("%w: %w", backends.ErrUnsupported, err)
	}
	req.Options.Grammar = g
	req.Messages = toolMessages(req.Tools, req.Messages)
	// A call is never cut by MAX_TOKENS (it would be lost, and it does not
	// reach the device as text): the generation may run to the longest
	// call; an answer in text still stops at MAX_TOKENS pieces.
	c := &callCatcher{emit: emit, textLimit: req.Options.MaxTokens}
	if longest := longestCall(tools) + 1; req.Options.MaxTokens > 0 && req.Options.MaxTokens < longest {
		req.Options.MaxTokens = longest
	}
	res, err := e.generate(ctx, req, c.write)
	if errors.Is(err, errTextLimit) {
		res.Stop = backends.StopLength
		return res, nil
	}
	if err != nil || !c.call {
		return res, err
	}
	idx, args, err := grammar.ParseCall(tools, c.buf)
	if err != nil {
		// The grammar admits only complete calls: this one was cut (by
		// max tokens or the context) before it closed.
		return res, fmt.Errorf("%w: the model's tool call is incomplete after %d tokens: %w", backends.ErrFailed, res.Tokens, err)
	}
	res.Call = &backends.ToolCall{Tool: idx, Name: tools[idx].Name, Args: append([]byte(nil), args...)}
	return res, nil
}

// callCatcher passes an answer through to emit and holds back a call:
// the grammar decides by the first byte ("<" starts a call, nothing else
// does).
type callCatcher struct {
	emit      backends.Emit
	textLimit int // pieces of text before errTextLimit; 0: none
	pieces    int
	decided   bool
	call      bool
	buf       []byte
}

// errTextLimit stops an answer in text at the request's MAX_TOKENS, which
// was raised for calls.
var errTextLimit = errors.New("llamacpp: text reached max tokens")

func (c *callCatcher) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if !c.decided {
		c.decided, c.call = true, p[0] == '<'
	}
	if c.call {
		c.buf = append(c.buf, p...)
		return nil
	}
	if err := c.emit(p); err != nil {
		return err
	}
	if c.pieces++; c.textLimit > 0 && c.pieces >= c.textLimit {
		return errTextLimit
	}
	return nil
}

// longestCall is the most bytes — so the most tokens — a call of these
// tools takes: <call>"NAME",ARGS</call>.
func longestCall(tools []grammar.Tool) int {
	n := 0
	for _, t := range tools {
		args := 2 // {}
		if t.Args != nil {
			args = t.Args.MaxBytes()
		}
		n = max(n, len(`<call>"",</call>`)+len(t.Name)+args)
	}
	return n
}

// toolMessages is the conversation as the model reads it: the tools
// described in a system turn, each call as the assistant wrote it, each
// result as a user turn <result>…</result> (every chat template has user
// turns; not all have tool turns).
func toolMessages(tools []backends.Tool, msgs []backends.Message) []backends.Message {
	// Short: small models have small contexts. The grammar holds the
	// model to each tool's schema; the text names the arguments.
	var b strings.Builder
	b.WriteString(`To call a tool answer <call>"NAME",{ARGUMENTS}</call>; its result comes as <result>...</result>. Tools:`)
	for _, t := range tools {
		fmt.Fprintf(&b, "\n%s(%s): %s", t.Name, strings.Join(argNames(t.Schema), ","), t.Description)
	}
	out := make([]backends.Message, 0, len(msgs)+1)
	if len(msgs) > 0 && msgs[0].Role == backends.RoleSystem {
		out = append(out, backends.Message{Role: backends.RoleSystem, Content: msgs[0].Content + "\n\n" + b.String()})
		msgs = msgs[1:]
	} else {
		out = append(out, backends.Message{Role: backends.RoleSystem, Content: b.String()})
	}
	return append(out, toolTurns(msgs)...)
}

// toolTurns writes each call as the assistant wrote it and each result as
// a user turn <result>…</result>; msgs itself when it holds neither.
func toolTurns(msgs []backends.Message) []backends.Message {
	if !slices.ContainsFunc(msgs, func(m backends.Message) bool { return m.ToolCall != nil || m.Role == backends.RoleTool }) {
		return msgs
	}
	out := make([]backends.Message, 0, len(msgs))
	for _, m := range msgs {
		switch {
		case m.ToolCall != nil:
			args := string(m.ToolCall.Args)
			if args == "" {
				args = "{}"
			}
			m = backends.Message{Role: backends.RoleAssistant, Content: `<call>"` + m.ToolCall.Name + `",` + args + `</call>`}
		case m.Role == backends.RoleTool:
			m = backends.Message{Role: backends.RoleUser, Content: "<result>" + m.Content + "</result>"}
		}
		out = append(out, m)
	}
	return out
}

// argNames are the property names of an argument schema, sorted.
func argNames(schema json.RawMessage) []string {
	var s struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if json.Unmarshal(schema, &s) != nil {
		return nil
	}
	names := make([]string, 0, len(s.Properties))
	for n := range s.Properties {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
