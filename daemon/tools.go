package daemon

import (
	"errors"
	"fmt"
	"sync"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/grammar"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Device tools (docs/protocol.md §16): a device declares its tools with
// TOOLS; an INFER with TOOLS_ON lets the model call them; each call goes to
// the device as a TOOL_CALL chunk of the answer stream (toolcall.go) and
// comes back as a TOOL_RESULT message.

// toolSet is one device's accepted declaration, compiled. A request takes
// the set in force when it is accepted and keeps it: a new declaration
// replaces the store's pointer, never the set.
type toolSet struct {
	tools   []backends.Tool   // what the engines get
	schemas []*grammar.Schema // per tool, nil: no arguments; checks Ollama's arguments
}

// toolStore keeps the declarations by device id, across sessions (a
// device declares again after its own reboot, not the daemon's), at most
// max device ids: a new one beyond it replaces the one declared longest ago.
// Each set is bounded by §16 (16 tools of at most 1.2 KB).
type toolStore struct {
	mu    sync.Mutex
	sets  map[string]*toolSet
	order []string // device ids, oldest declaration first
}

func (t *toolStore) get(device string) *toolSet {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sets[device]
}

func (t *toolStore) put(device string, set *toolSet, limit int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sets == nil {
		t.sets = make(map[string]*toolSet)
	}
	for i, id := range t.order {
		if id == device {
			t.order = append(t.order[:i], t.order[i+1:]...)
			break
		}
	}
	for len(t.order) >= limit {
		delete(t.sets, t.order[0])
		t.order = t.order[1:]
	}
	t.sets[device] = set
	t.order = append(t.order, device)
}

// compileTools checks a TOOLS declaration against what this session can
// carry: every schema of the §11.4.1 subset and of type object
// (UNSUPPORTED_OPTION otherwise), and the longest arguments of each within
// one TOOL_CALL frame of the device's (TOO_LARGE otherwise).
func compileTools(m *serialproto.Tools, argsLimit int) (*toolSet, *serialproto.Error) {
	set := &toolSet{}
	gt := make([]grammar.Tool, len(m.Tools))
	for i, d := range m.Tools {
		t := backends.Tool{Name: d.Name, Description: d.Description}
		var sc *grammar.Schema
		if len(d.Schema) > 0 {
			var err error
			if sc, err = grammar.Parse(d.Schema); err != nil {
				return nil, serialproto.NewError(serialproto.CodeUnsupportedOption, deviceText(fmt.Errorf("tool %s: %w", d.Name, err)))
			}
			if n := sc.MaxBytes(); n > argsLimit {
				return nil, serialproto.NewError(serialproto.CodeTooLarge, fmt.Sprintf("tool %s: arguments up to %d bytes, frame holds %d", d.Name, n, argsLimit))
			}
			t.Schema = sc.JSON()
		}
		gt[i] = grammar.Tool{Name: d.Name, Description: d.Description, Args: sc}
		set.tools = append(set.tools, t)
		set.schemas = append(set.schemas, sc)
	}
	// The call grammar accepts only object schemas: build it once here so
	// that a declaration the engine would refuse is refused now.
	if _, err := grammar.ToolGrammar(gt, false); err != nil {
		return nil, serialproto.NewError(serialproto.CodeUnsupportedOption, deviceText(err))
	}
	return set, nil
}

// declare takes a TOOLS frame: reassembly (§6), then the declaration
// replaces the device's. Like an INFER, a TOOLS message takes its seq when
// accepted (ACK), so a refused one is judged again when it is resent, and
// a copy of an accepted one gets its ACK again.
func (s *session) declare(f serialproto.Frame, dup bool) {
	if f.Flags&serialproto.FlagFragment == 0 || len(f.Data) < serialproto.FragmentHeaderLen {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, "TOOLS must be a message of fragments (§6)"))
		return
	}
	count := uint16(f.Data[1])
	if dup {
		s.send(f.Seq, &serialproto.Ack{Next: count})
		return
	}
	body, _ := s.reassemble(f)
	if body == nil {
		return
	}
	var m serialproto.Tools
	if err := m.UnmarshalBody(body); err != nil {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, deviceText(err)))
		return
	}
	set, e := compileTools(&m, serialproto.BodyLimit(s.maxData, s.seal.signed())-serialproto.ToolCallHeader)
	if e != nil {
		s.send(f.Seq, e)
		return
	}
	s.d.tools.put(s.deviceID, set, s.d.conf().MaxToolDevices)
	s.mu.Lock()
	s.seqs.Take(f.Seq)
	s.mu.Unlock()
	s.send(f.Seq, &serialproto.Ack{Next: count})
}

// reassemble adds a fragment of a TOOLS or TOOL_RESULT message and answers
// what reassembly needs answered, as for an INFER (§6: NACK MISSING for a
// gap, at once after the last fragment or half an RTO after silence); it returns the body once complete, nil
// otherwise, and the reassembler's error (already answered). A late copy
// of a finished message (ErrDuplicate) is answered with its ACK.
func (s *session) reassemble(f serialproto.Frame) ([]byte, error) {
	s.mu.Lock()
	body, missing, err := s.addFragment(s.d.clock.Now(), f)
	s.mu.Unlock()
	switch {
	case errors.Is(err, serialproto.ErrDuplicate):
		s.send(f.Seq, &serialproto.Ack{Next: uint16(f.Data[1])})
	case errors.Is(err, serialproto.ErrBusy):
		s.send(f.Seq, serialproto.NewError(serialproto.CodeBusy, "too many messages in reassembly"))
	case errors.Is(err, serialproto.ErrTooLarge):
		s.send(f.Seq, serialproto.NewError(serialproto.CodeTooLarge, fmt.Sprintf("message above max_message, %d bytes", s.d.conf().MaxMessage)))
	case errors.Is(err, serialproto.ErrBadChecksum):
		s.send(f.Seq, &serialproto.Nack{Reason: serialproto.NackBadChecksum})
	case err != nil:
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, deviceText(err)))
	case missing != nil: // the last fragment found a gap, or a probe came (§6)
		s.send(f.Seq, &serialproto.Nack{Reason: serialproto.NackMissing, Missing: missing})
	}
	return body, err
}

// toolResult takes a TOOL_RESULT frame: a message of fragments under the
// INFER's seq, for the call that request has outstanding. A result too
// large (above 1024 bytes, or the message above max_message) is answered
// TOO_LARGE and ends the request with TOOL_LIMIT (§16).
func (s *session) toolResult(f serialproto.Frame) {
	if f.Flags&serialproto.FlagFragment == 0 || len(f.Data) < serialproto.FragmentHeaderLen {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, "TOOL_RESULT must be a message of fragments (§6)"))
		return
	}
	r := s.request(f.Seq)
	if r == nil || r.calls == nil {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeUnexpected, "no request with tools under this seq"))
		return
	}
	switch reassemble, isCopy := r.calls.fragment(f.Data); {
	case isCopy:
		s.send(f.Seq, &serialproto.Ack{Next: uint16(f.Data[1])})
		return
	case !reassemble:
		s.send(f.Seq, serialproto.NewError(serialproto.CodeUnexpected, "no call outstanding for this result"))
		return
	}
	// Results of one request follow each other under (TOOL_RESULT, seq):
	// a fragment counting other than the message in reassembly belongs to
	// another result. If that message's fragment 0 is in, it is the
	// outstanding call's and this fragment a late copy of an earlier
	// result's: dropped. If not, the message may be such a copy: this
	// fragment starts afresh (what was dropped is NACKed MISSING, §6).
	// Refusing the mix MALFORMED made the device stop resending the result.
	s.mu.Lock()
	if n, first := s.reasm.Partial(f.Cmd, f.Seq); n != 0 && n != int(f.Data[1]) {
		if first {
			s.mu.Unlock()
			return
		}
		s.reasm.Forget(f.Cmd, f.Seq)
	}
	s.mu.Unlock()
	body, err := s.reassemble(f)
	if errors.Is(err, serialproto.ErrTooLarge) {
		r.calls.fail(errToolResultTooLarge)
	}
	if body == nil {
		return
	}
	// The reassembler must not judge the next message under this key a
	// copy of this one: each result names its call, and take tells a copy
	// (of the result last taken) from the next call's result.
	s.mu.Lock()
	s.reasm.Forget(serialproto.CmdToolResult, f.Seq)
	s.mu.Unlock()
	var m serialproto.ToolResult
	switch err := m.UnmarshalBody(body); {
	case errors.Is(err, serialproto.ErrTooLarge):
		s.send(f.Seq, serialproto.NewError(serialproto.CodeTooLarge, fmt.Sprintf("result above %d bytes", serialproto.MaxToolResult)))
		r.calls.fail(errToolResultTooLarge)
		return
	case err != nil:
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, deviceText(err)))
		return
	}
	if !r.calls.take(&m) {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeUnexpected, fmt.Sprintf("call %d is not outstanding", m.Call)))
		return
	}
	s.send(f.Seq, &serialproto.Ack{Next: uint16(f.Data[1])})
}

// toolsFor resolves an INFER's TOOLS_ON option: the device's declaration in
// force now, which the request keeps. TOOLS_ON without a declaration, or
// with a SCHEMA (an answer of a schema cannot also be a call), is
// UNSUPPORTED_OPTION before the ACK.
func (s *session) toolsFor(m *serialproto.Infer, schema bool) (*toolCalls, *serialproto.Error) {
	if !m.Set.Has(serialproto.OptToolsOn) {
		return nil, nil
	}
	if schema {
		return nil, serialproto.NewError(serialproto.CodeUnsupportedOption, "TOOLS_ON with a SCHEMA")
	}
	set := s.d.tools.get(s.deviceID)
	if set == nil {
		return nil, serialproto.NewError(serialproto.CodeUnsupportedOption, "TOOLS_ON: this device declared no tools (send TOOLS)")
	}
	return newToolCalls(set), nil
}
