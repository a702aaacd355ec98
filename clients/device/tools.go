package device

import (
	"context"
	"fmt"
	"unicode/utf8"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Device tools (docs/protocol.md §16): the device declares what the model
// may ask it for, and answers the calls while an Ask with TOOLS_ON runs.

// Tool is one tool of the device: what the model reads about it, the JSON
// Schema of its arguments (an object schema of the §11.4.1 subset; empty:
// no arguments), and the function that runs it.
type Tool struct {
	Name        string
	Description string
	Schema      string
	// Handler runs a call. args is the call's arguments, minified 7-bit
	// ASCII JSON of Schema ("{}" or empty without arguments). What it
	// returns is what the model reads (at most 1024 bytes of UTF-8); an
	// error is reported to the model as the call's failure. It runs once
	// per call, however often the network repeats the TOOL_CALL.
	Handler func(ctx context.Context, args []byte) (string, error)
}

// DeclareTools sends the device's tools (TOOLS) and waits for the daemon
// to accept them. They replace any earlier declaration and stay with the
// daemon for this device id across sessions, until the daemon restarts: a
// device declares them after each of its own boots. An Ask with TOOLS_ON
// set in its INFER lets the model call them.
func (c *Client) DeclareTools(ctx context.Context, tools []Tool) error {
	if c.welcome.Version == 0 {
		return ErrNoSession
	}
	m := serialproto.Tools{Tools: make([]serialproto.ToolDecl, len(tools))}
	for i, t := range tools {
		if t.Handler == nil {
			return fmt.Errorf("device: tool %s has no handler", t.Name)
		}
		m.Tools[i] = serialproto.ToolDecl{Name: t.Name, Description: t.Description, Schema: []byte(t.Schema)}
	}
	body, err := m.AppendBody(nil)
	if err != nil {
		return err
	}
	c.seq++
	seq := c.seq
	frames, err := c.messageFrames(serialproto.CmdTools, seq, body)
	if err != nil {
		return err
	}
	var missing []byte
	err = c.exchange(ctx, seq, func(attempt int) error {
		return c.resendMessage(frames, attempt, &missing)
	}, func(_ serialproto.Frame, msg serialproto.Message) (bool, error) {
		switch msg := msg.(type) {
		case *serialproto.Ack:
			return true, nil
		case *serialproto.Nack:
			if msg.Reason == serialproto.NackMissing {
				missing = append([]byte(nil), msg.Missing...)
				return false, c.resendMessage(frames, 1, &missing)
			}
			return false, c.resendMessage(frames, 0, nil)
		case *serialproto.Error:
			return true, msg
		}
		return false, nil
	}, nil)
	if err != nil {
		return err
	}
	c.tools = append([]Tool(nil), tools...)
	return nil
}

// messageFrames cuts a body into the fragments of a message (§6).
func (c *Client) messageFrames(cmd serialproto.Command, seq uint8, body []byte) ([]serialproto.Frame, error) {
	piece := serialproto.PieceSize(int(c.welcome.MaxData), c.signer != nil)
	if c.cfg.MaxSend > 0 {
		piece = min(piece, serialproto.PieceSize(c.cfg.MaxSend, c.signer != nil))
	}
	datas, err := serialproto.Fragments(body, piece)
	if err != nil {
		return nil, err
	}
	frames := make([]serialproto.Frame, len(datas))
	for i, d := range datas {
		frames[i] = serialproto.Frame{Version: serialproto.Version1, Cmd: cmd, Flags: serialproto.FlagFragment, Seq: seq, Data: d}
	}
	return frames, nil
}

// resendMessage sends a message's fragments: all of them on attempt 0, the
// ones the daemon listed missing (NACK MISSING) when there are, otherwise
// the last one as a probe (§6). Each is encoded (and signed) anew.
func (c *Client) resendMessage(frames []serialproto.Frame, attempt int, missing *[]byte) error {
	send := func(f serialproto.Frame) error {
		raw, err := c.encode(f)
		if err != nil {
			return err
		}
		return c.t.Send(raw)
	}
	switch {
	case attempt == 0:
		for _, f := range frames {
			if err := send(f); err != nil {
				return err
			}
		}
	case missing != nil && *missing != nil:
		for _, i := range *missing {
			if int(i) < len(frames) {
				if err := send(frames[i]); err != nil {
					return err
				}
			}
		}
		*missing = nil
	default:
		return send(frames[len(frames)-1])
	}
	return nil
}

// toolAnswer runs a TOOL_CALL the stream delivered in order — once — and
// returns the TOOL_RESULT body's message.
func (c *Client) toolAnswer(ctx context.Context, call *serialproto.ToolCall) *serialproto.ToolResult {
	res := &serialproto.ToolResult{Call: call.Call}
	fail := func(text string) *serialproto.ToolResult {
		res.Status, res.Result = serialproto.ToolFailed, []byte(cutText(text, serialproto.MaxToolResult))
		return res
	}
	if int(call.Tool) >= len(c.tools) {
		return fail(fmt.Sprintf("the device has no tool %d", call.Tool))
	}
	out, err := c.tools[call.Tool].Handler(ctx, call.Args)
	switch {
	case err != nil:
		return fail(err.Error())
	case len(out) > serialproto.MaxToolResult:
		return fail(fmt.Sprintf("the tool's result has %d bytes, at most %d", len(out), serialproto.MaxToolResult))
	case !utf8.ValidString(out):
		return fail("the tool's result is not UTF-8")
	}
	res.Result = []byte(out)
	return res
}

// cutText cuts s to at most n bytes at a character boundary.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// UseTools sets the handlers of tools the daemon already holds for this
// device id — declared in an earlier session, which the daemon keeps —
// without sending them again. The order must be the declaration's.
func (c *Client) UseTools(tools []Tool) { c.tools = append([]Tool(nil), tools...) }
