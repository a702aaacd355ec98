package serialproto

import (
	"errors"
	"strings"
	"testing"
)

func TestEveryCommandHasABody(t *testing.T) {
	for c := Command(0); c <= 0x3F; c++ {
		m, err := NewMessage(c)
		if c.Known() != (err == nil) {
			t.Fatalf("%s: known %v, NewMessage err %v", c, c.Known(), err)
		}
		if err == nil && m.Command() != c {
			t.Fatalf("%s: NewMessage gave %s", c, m.Command())
		}
		if got, ok := ParseCommand(c.String()); c.Known() && (!ok || got != c) {
			t.Fatalf("ParseCommand(%s) = %v %v", c, got, ok)
		}
	}
	if _, err := ParseBody(0x20, nil); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown command: %v", err)
	}
}

func TestInferSkipsUnknownHints(t *testing.T) {
	// opt_len 9: hint 0x20 (3 bytes, unknown), hint 0x20 again, MAX_TOKENS 16.
	body := []byte{11, 0x20, 1, 0xAA, 0x20, 1, 0xBB, 0x02, 2, 0, 16, 'h', 'i'}
	body[0] = byte(len(body) - 3)
	var m Infer
	if err := m.UnmarshalBody(body); err != nil {
		t.Fatal(err)
	}
	if !m.Set.Has(OptMaxTokens) || m.MaxTokens != 16 || m.Prompt != "hi" || m.Set.Has(0x20) {
		t.Fatalf("got %+v", m)
	}
}

func TestInferOptionLimits(t *testing.T) {
	m := &Infer{Set: OptionSet(0).With(OptModel).With(OptSystem), Model: strings.Repeat("m", 128), System: strings.Repeat("s", 253), Prompt: "x"}
	if _, err := m.AppendBody(nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("options above 255 bytes: %v", err)
	}
	m.Set = OptionSet(0).With(OptSystem)
	b, err := m.AppendBody(nil)
	if err != nil {
		t.Fatal(err)
	}
	var back Infer
	if err := back.UnmarshalBody(b); err != nil || back.System != m.System {
		t.Fatalf("253-byte system prompt: %v", err)
	}
	m.System += "s"
	if _, err := m.AppendBody(nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("254-byte system prompt: %v", err)
	}
}

func TestErrorCodes(t *testing.T) {
	for c := ErrorCode(1); c <= CodeToolLimit; c++ {
		if !c.Known() || strings.HasPrefix(c.String(), "ERROR_CODE") {
			t.Fatalf("code %d has no name", c)
		}
	}
	e := NewError(CodeBusy, "queue full")
	if !e.Retryable() || e.Stream() || e.Error() != "BUSY: queue full" {
		t.Fatalf("%+v", e)
	}
	if NewError(CodeMalformed, "").Retryable() || ErrorCode(99).Retryable() {
		t.Fatal("non-retryable codes marked retryable")
	}
	var err error = e
	var got *Error
	if !errors.As(err, &got) || got.Code != CodeBusy {
		t.Fatal("an ERROR body is not usable as a Go error")
	}
}

// TestCommandRoles is §4's table: which way each command travels and
// which start a request of their own (§5).
func TestCommandRoles(t *testing.T) {
	const d2m, m2d, both = 1, 2, 3
	table := map[Command]struct {
		dir     int
		request bool
	}{
		CmdHello: {d2m, true}, CmdWelcome: {m2d, false}, CmdPing: {both, true}, CmdPong: {both, false},
		CmdInfer: {d2m, true}, CmdToken: {m2d, false}, CmdDone: {m2d, false}, CmdError: {both, false},
		CmdCancel: {d2m, false}, CmdAck: {both, false}, CmdNack: {both, false}, CmdStatus: {d2m, true},
		CmdStatusReply: {m2d, false}, CmdBye: {both, true},
		CmdTools: {d2m, true}, CmdToolCall: {m2d, false}, CmdToolResult: {d2m, false},
	}
	for c := range Command(64) {
		want, known := table[c]
		if c.Travels(DeviceToDaemon) != (want.dir&d2m != 0) || c.Travels(DaemonToDevice) != (want.dir&m2d != 0) {
			t.Errorf("%v travels device→daemon %v, daemon→device %v; want dir %d", c, c.Travels(DeviceToDaemon), c.Travels(DaemonToDevice), want.dir)
		}
		if c.Request() != want.request || (!known && c.Request()) {
			t.Errorf("%v.Request() = %v", c, c.Request())
		}
		if frag := c == CmdInfer || c == CmdTools || c == CmdToolResult; c.Fragmented() != frag {
			t.Errorf("%v.Fragmented() = %v", c, c.Fragmented())
		}
	}
}
