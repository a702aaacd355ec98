package llamacpp

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/grammar"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/daemontest"
	"github.com/mcpd-project/mcpd/native/gguf"
	"github.com/mcpd-project/mcpd/serialproto"
)

var toolCases = []backends.Tool{
	{Name: "read_sensor", Description: "Reads a sensor.", Schema: []byte(`{"type":"object","properties":{"sensor":{"enum":["soil","air"]}}}`)},
	{Name: "set_relay", Description: "Switches the relay.", Schema: []byte(`{"type":"object","properties":{"on":{"type":"boolean"}}}`)},
	{Name: "uptime", Description: "Seconds since boot."},
}

// TestLlamaToolHistoryPlain: a request without tools whose history holds
// an earlier request's call and result (the daemon keeps them, §16) reads
// them as they were written when made — the call as the assistant wrote it,
// the result as a <result> user turn: the same prompt as that text. Before,
// the call turn was read empty and the result under a "tool" role.
func TestLlamaToolHistoryPlain(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{SequenceContext: 512})
	call := &backends.ToolCall{Tool: 0, Name: "read_sensor", Args: []byte(`{"sensor":"soil"}`)}
	asText := []backends.Message{
		{Role: backends.RoleUser, Content: "q"},
		{Role: backends.RoleAssistant, Content: `<call>"read_sensor",{"sensor":"soil"}</call>`},
		{Role: backends.RoleUser, Content: "<result>41 %</result>"},
		{Role: backends.RoleAssistant, Content: "wet"},
		{Role: backends.RoleUser, Content: "and now?"},
	}
	kept := slices.Clone(asText)
	kept[1] = backends.Message{Role: backends.RoleAssistant, ToolCall: call}
	kept[2] = backends.Message{Role: backends.RoleTool, Content: "41 %"}
	var prompt [2]int
	for i, msgs := range [][]backends.Message{asText, kept} {
		_, res, err := collect(t, e, context.Background(), backends.Request{Messages: msgs, Options: backends.Options{MaxTokens: 2, SeedSet: true}})
		if err != nil {
			t.Fatal(err)
		}
		prompt[i] = res.PromptTokens
	}
	if prompt[0] != prompt[1] || prompt[0] == 0 {
		t.Fatalf("prompt of %d tokens with the turns kept, %d written as text", prompt[1], prompt[0])
	}
}

// TestLlamaToolCalls: on the random-weight model, sampled hot, every seed
// gives either a valid call of a declared tool (nothing emitted, arguments
// of its schema) or an answer that does not begin with "<" — never a
// malformed call; with ToolRequired every seed calls. A conversation
// holding a call and its result generates again.
func TestLlamaToolCalls(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{SequenceContext: 512})
	schemas := make([]*grammar.Schema, len(toolCases))
	for i, tc := range toolCases {
		if len(tc.Schema) > 0 {
			var err error
			if schemas[i], err = grammar.Parse(tc.Schema); err != nil {
				t.Fatal(err)
			}
		}
	}
	request := func(seed int, choice backends.ToolChoice) backends.Request {
		return backends.Request{
			Messages: []backends.Message{{Role: backends.RoleUser, Content: prompts[seed%len(prompts)]}},
			Options:  backends.Options{TemperatureSet: true, Temperature: 1.2, TopK: 64, Seed: uint32(seed), SeedSet: true, MaxTokens: 48},
			Tools:    toolCases, ToolChoice: choice,
		}
	}
	check := func(seed int, out string, res backends.Result) {
		t.Helper()
		if res.Call == nil {
			if strings.HasPrefix(out, "<") || out == "" {
				t.Errorf("seed %d: answer %q", seed, out)
			}
			return
		}
		c := res.Call
		if out != "" || c.Tool < 0 || c.Tool >= len(toolCases) || c.Name != toolCases[c.Tool].Name {
			t.Fatalf("seed %d: call %+v with text %q", seed, c, out)
		}
		if sc := schemas[c.Tool]; sc != nil && sc.Validate(c.Args) != nil || sc == nil && string(c.Args) != "{}" {
			t.Errorf("seed %d: arguments %s", seed, c.Args)
		}
	}
	calls := 0
	for seed := range 24 {
		out, res, err := collect(t, e, context.Background(), request(seed, backends.ToolAuto))
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		check(seed, out, res)
		if res.Call != nil {
			calls++
		}
	}
	t.Logf("auto: %d of 24 seeds called a tool", calls)
	for seed := range 12 {
		out, res, err := collect(t, e, context.Background(), request(seed, backends.ToolRequired))
		if err != nil || res.Call == nil {
			t.Fatalf("seed %d: required, got %q %+v %v", seed, out, res.Call, err)
		}
		check(seed, out, res)
		req := request(seed, backends.ToolAuto)
		req.Messages = append(req.Messages, backends.Message{Role: backends.RoleAssistant, ToolCall: res.Call},
			backends.Message{Role: backends.RoleTool, Content: "41 %"})
		out, res, err = collect(t, e, context.Background(), req)
		if err != nil {
			t.Fatalf("seed %d after the result: %v", seed, err)
		}
		check(seed, out, res)
	}
	// MAX_TOKENS below the longest call does not cut a call; an answer in
	// text still stops there.
	for seed := range 6 {
		for _, choice := range []backends.ToolChoice{backends.ToolRequired, backends.ToolAuto} {
			req := request(seed, choice)
			req.Options.MaxTokens = 3
			out, res, err := collect(t, e, context.Background(), req)
			if err != nil || (choice == backends.ToolRequired && res.Call == nil) || (res.Call == nil && (res.Stop != backends.StopLength || len([]rune(out)) > 3*4)) {
				t.Fatalf("seed %d, choice %d, 3 tokens: %q %+v %v", seed, choice, out, res, err)
			}
			check(seed, out, res)
		}
	}
	req := request(0, backends.ToolAuto)
	req.Options.Grammar = `root ::= "x"`
	if _, _, err := collect(t, e, context.Background(), req); err == nil {
		t.Fatal("tools with a grammar accepted")
	}
}

// TestLlamaToolsThroughDaemon: a device on real UDP, mcpd with the
// in-process engine on the tiny random model, tool choice "first": the
// model must call the device's sensor, the handler runs once per call, and
// the request ends in exactly one final chunk — an answer, or TOOL_LIMIT
// when the random model keeps calling (it has no idea what a result means).
func TestLlamaToolsThroughDaemon(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{SequenceContext: 512})
	c := daemontest.Session(t, e, daemon.Config{ToolChoice: "first"}, device.Config{DeviceID: "garden"})
	actx, acancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer acancel()
	var runs atomic.Int64
	handler := func(_ context.Context, args []byte) (string, error) { runs.Add(1); return "41 %", nil }
	tools := make([]device.Tool, len(toolCases))
	for i, tc := range toolCases {
		tools[i] = device.Tool{Name: tc.Name, Description: tc.Description, Schema: string(tc.Schema), Handler: handler}
	}
	if err := c.DeclareTools(actx, tools); err != nil {
		t.Fatal(err)
	}
	for seed := range uint32(4) {
		before := runs.Load()
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptToolsOn).With(serialproto.OptSeed).With(serialproto.OptMaxTokens),
			Seed: seed, MaxTokens: 48, Prompt: "Is the soil dry?"}
		var text strings.Builder
		_, err := c.Ask(actx, m, func(b []byte) error { text.Write(b); return nil })
		n := runs.Load() - before
		var perr *serialproto.Error
		switch {
		case err == nil:
		case errors.As(err, &perr) && perr.Code == serialproto.CodeToolLimit && n == 4:
		default:
			t.Fatalf("seed %d: %v after %d calls", seed, err, n)
		}
		if n < 1 || n > 4 {
			t.Fatalf("seed %d: the handler ran %d times", seed, n)
		}
		t.Logf("seed %d: %d calls, answer %q, err %v", seed, n, text.String(), err)
	}
}
