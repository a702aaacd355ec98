package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Errors that end a request with tools (docs/protocol.md §16).
var (
	errToolTimeout        = errors.New("daemon: the device's tool did not answer in time")
	errToolLimit          = errors.New("daemon: too many tool calls")
	errToolResultTooLarge = errors.New("daemon: tool result too large")
)

// toolCalls is the tool state of one TOOLS_ON request: the declaration it
// started with and the call awaiting its result. At most one call is
// outstanding, so (TOOL_RESULT, seq) names one message at a time.
type toolCalls struct {
	set    *toolSet
	result chan serialproto.ToolResult // the outstanding call's result
	failed chan error                  // a result the request cannot take (too large)

	mu          sync.Mutex
	outstanding int // call index awaiting its result; -1: none
	lastTaken   int // the last call whose result was taken; -1: none
}

func newToolCalls(set *toolSet) *toolCalls {
	return &toolCalls{set: set, result: make(chan serialproto.ToolResult, 1), failed: make(chan error, 1), outstanding: -1, lastTaken: -1}
}

func (c *toolCalls) expect(call int) {
	c.mu.Lock()
	c.outstanding = call
	c.mu.Unlock()
}

// abandon forgets the outstanding call: a later result for it is UNEXPECTED.
func (c *toolCalls) abandon() { c.expect(-1) }

// take delivers m if it answers the outstanding call and reports whether
// the device gets its ACK: also for a copy of the result last taken,
// which is used once.
func (c *toolCalls) take(m *serialproto.ToolResult) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch int(m.Call) {
	case c.outstanding:
		c.result <- serialproto.ToolResult{Call: m.Call, Status: m.Status, Result: append([]byte(nil), m.Result...)}
		c.lastTaken, c.outstanding = c.outstanding, -1
		return true
	case c.lastTaken:
		return true
	}
	return false
}

// fragment tells what to do with a TOOL_RESULT fragment (data: its
// fragment header and piece): reassemble it for the outstanding call, or
// answer it with the ACK as a copy of the result last taken, or neither
// (UNEXPECTED). A fragment 0 names its call (the body's first byte); the
// others cannot, and are taken for the outstanding call while there is
// one. Without this a late copy of a fragment of the result taken started
// a new message under (TOOL_RESULT, seq), and the next call's result,
// mixed into it, was refused MALFORMED (a count differing) or NACKed
// BAD_CHECKSUM — the first made the device stop resending, and the
// request ended in TOOL_TIMEOUT.
func (c *toolCalls) fragment(data []byte) (reassemble, isCopy bool) {
	call := -1 // not known
	if data[0] == 0 && len(data) > serialproto.FragmentHeaderLen {
		call = int(data[serialproto.FragmentHeaderLen])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.outstanding >= 0 && (call < 0 || call == c.outstanding):
		return true, false
	case c.lastTaken >= 0 && (call < 0 || call == c.lastTaken):
		return false, true
	}
	return false, false
}

// fail ends the outstanding call with err; with none outstanding (the
// message came late or early) it does nothing.
func (c *toolCalls) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outstanding < 0 {
		return
	}
	select {
	case c.failed <- err:
	default:
	}
}

// generateWithTools runs generations until one ends in an answer: each
// that ends in a tool call sends TOOL_CALL, waits for the result, and adds
// the call and its result to the conversation of the next. run is one
// generation with the tool turns so far and the tool choice.
func (r *request) generateWithTools(run func(extra []backends.Message, choice backends.ToolChoice) (backends.Result, error)) (backends.Result, error) {
	cfg := r.s.d.conf()
	choice := backends.ToolAuto
	if cfg.ToolChoice == "first" {
		choice = backends.ToolRequired
	}
	var total backends.Result
	start := r.s.d.clock.Now()
	for calls := 0; ; calls++ {
		res, err := run(r.toolTurns, choice)
		total.Tokens += res.Tokens
		total.PromptTokens += res.PromptTokens
		total.PromptCached += res.PromptCached
		total.Stop = res.Stop
		if total.TTFT == 0 && res.TTFT > 0 {
			total.TTFT = r.s.d.clock.Now().Sub(start) - res.Duration + res.TTFT
		}
		total.Duration = r.s.d.clock.Now().Sub(start)
		if err != nil || res.Call == nil {
			return total, err
		}
		if calls >= cfg.MaxToolCalls {
			return total, fmt.Errorf("%w: the model's call %d, at most %d", errToolLimit, calls+1, cfg.MaxToolCalls)
		}
		result, err := r.callTool(uint8(calls), res.Call)
		if err != nil {
			return total, err
		}
		r.toolTurns = append(r.toolTurns, backends.Message{Role: backends.RoleAssistant, ToolCall: res.Call},
			backends.Message{Role: backends.RoleTool, Content: result})
		choice = backends.ToolAuto // the model has its result: now it may answer
	}
}

// callTool sends call number idx to the device and returns the result the
// model reads. A call the device cannot run — an undeclared tool, arguments
// not of the tool's schema or too long for a frame (a model sampled without
// our grammar, as Ollama's are, may produce them) — never reaches the
// device: the model reads why and goes on (§16).
func (r *request) callTool(idx uint8, call *backends.ToolCall) (string, error) {
	set := r.calls.set
	if call.Tool < 0 || call.Tool >= len(set.tools) {
		return fmt.Sprintf("error: there is no tool named %q", call.Name), nil
	}
	name, args := set.tools[call.Tool].Name, []byte(call.Args)
	if sc := set.schemas[call.Tool]; sc == nil {
		if len(args) > 0 && string(args) != "{}" {
			return "error: " + name + " takes no arguments", nil
		}
	} else if err := sc.Validate(args); err != nil {
		return "error: " + deviceText(err), nil
	}
	if len(args) > serialproto.BodyLimit(r.s.maxData, r.s.seal.signed())-serialproto.ToolCallHeader {
		return "error: the arguments are too long for the device", nil
	}
	d := r.s.d
	r.calls.expect(int(idx))
	defer r.calls.abandon()
	d.stats.ToolCalls.Add(1)
	acked := r.st.toolCall(idx, uint8(call.Tool), args)
	// The tool's time starts when the device has the call; until then the
	// stream's retransmission (and its retry budget) is at work.
	var timeout <-chan time.Time
	for {
		select {
		case <-acked:
			acked = nil
			t := d.clock.NewTimer(d.conf().ToolTimeout)
			defer t.Stop()
			timeout = t.C()
		case m := <-r.calls.result:
			if m.Status == serialproto.ToolFailed {
				return "error: " + string(m.Result), nil
			}
			return string(m.Result), nil
		case err := <-r.calls.failed:
			return "", err
		case <-timeout:
			d.stats.ToolTimeouts.Add(1)
			return "", fmt.Errorf("%w: %s, %v", errToolTimeout, name, d.conf().ToolTimeout)
		case <-r.ctx.Done():
			return "", context.Cause(r.ctx)
		}
	}
}

// toolCall queues a TOOL_CALL chunk after the text written so far
// (§16); the returned channel closes once the device has acknowledged it.
// The caller writes nothing more until the call's result is in, so at most
// one call waits at a time.
func (s *stream) toolCall(call, tool uint8, args []byte) <-chan struct{} {
	s.mu.Lock()
	s.call = &serialproto.ToolCall{Call: call, Tool: tool, Args: args}
	s.callAcked = make(chan struct{})
	acked := s.callAcked
	s.mu.Unlock()
	s.notify()
	return acked
}
