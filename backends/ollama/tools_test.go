package ollama

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/daemontest"
	"github.com/mcpd-project/mcpd/internal/ollamatest"
	"github.com/mcpd-project/mcpd/serialproto"
	"github.com/ollama/ollama/api"
)

const sensorSchema = `{"type":"object","properties":{"sensor":{"enum":["soil","air"]}}}`

var sensorTools = []backends.Tool{
	{Name: "read_sensor", Description: "Reads a sensor.", Schema: []byte(sensorSchema)},
	{Name: "uptime", Description: "Seconds since boot."},
}

func ollamaCall(name string, args map[string]any) api.ToolCallFunction {
	a := api.NewToolCallFunctionArguments()
	for k, v := range args {
		a.Set(k, v)
	}
	return api.ToolCallFunction{Name: name, Arguments: a}
}

// TestOllamaToolCalls: the tools go to /api/chat as Ollama's function
// tools, a tool_calls reply ends the generation with Result.Call (nothing
// emitted), and the call and its result go back as an assistant turn with
// tool_calls and a tool turn naming the tool.
func TestOllamaToolCalls(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{Calls: []api.ToolCallFunction{
		ollamaCall("read_sensor", map[string]any{"sensor": "soil"}),
		ollamaCall("launch", map[string]any{"where": "Mönchengladbach"}),
	}})
	o := newOllama(t, Config{}, srv)
	req := chatReq("Is the soil dry?")
	req.Tools = sensorTools
	pieces, res, err := collectPieces(context.Background(), o, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(pieces) != 0 || res.Call == nil || res.Call.Tool != 0 || res.Call.Name != "read_sensor" || string(res.Call.Args) != `{"sensor":"soil"}` {
		t.Fatalf("pieces %q, call %+v", pieces, res.Call)
	}
	sent := srv.Requests()[0]
	if len(sent.Tools) != 2 || sent.Tools[0].Type != "function" || sent.Tools[0].Function.Name != "read_sensor" ||
		sent.Tools[0].Function.Description != "Reads a sensor." || sent.Tools[0].Function.Parameters.Type != "object" {
		t.Fatalf("tools sent %v", sent.Tools)
	}
	if p, ok := sent.Tools[0].Function.Parameters.Properties.Get("sensor"); !ok || len(p.Enum) != 2 {
		t.Fatalf("parameters sent %v", sent.Tools[0].Function.Parameters.String())
	}
	// The result goes back; the script's next call names a tool that does
	// not exist, with non-ASCII arguments, which come escaped.
	req.Messages = append(req.Messages, backends.Message{Role: backends.RoleAssistant, ToolCall: res.Call},
		backends.Message{Role: backends.RoleTool, Content: "41 %"})
	_, res, err = collectPieces(context.Background(), o, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Call == nil || res.Call.Tool != -1 || res.Call.Name != "launch" || string(res.Call.Args) != `{"where":"M\u00f6nchengladbach"}` {
		t.Fatalf("call %+v %s", res.Call, res.Call.Args)
	}
	msgs := srv.Requests()[1].Messages
	if len(msgs) != 3 || len(msgs[1].ToolCalls) != 1 || msgs[1].ToolCalls[0].Function.Name != "read_sensor" ||
		msgs[1].ToolCalls[0].Function.Arguments.String() != `{"sensor":"soil"}` || msgs[2].Role != "tool" || msgs[2].ToolName != "read_sensor" || msgs[2].Content != "41 %" {
		t.Fatalf("messages sent %+v", msgs)
	}
	// Past the script the model answers.
	req.Messages = append(req.Messages, backends.Message{Role: backends.RoleAssistant, ToolCall: res.Call},
		backends.Message{Role: backends.RoleTool, Content: "error: no such tool"})
	pieces, res, err = collectPieces(context.Background(), o, req)
	if err != nil || res.Call != nil || strings.Join(pieces, "") != strings.Join(ollamatest.DefaultTokens, "") {
		t.Fatalf("%q %+v %v", pieces, res.Call, err)
	}
}

// TestOllamaModelWithoutTools: Ollama refuses tools for a model whose
// template has none (HTTP 400); that is ErrUnsupported, not retried.
func TestOllamaModelWithoutTools(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{Models: []ollamatest.Model{{Name: "tiny", ContextLength: 2048, NoTools: true}}})
	o := newOllama(t, Config{}, srv)
	req := chatReq("hi")
	req.Tools = sensorTools
	_, _, err := collectPieces(context.Background(), o, req)
	if !errors.Is(err, backends.ErrUnsupported) || !strings.Contains(err.Error(), "does not support tools") || len(srv.Requests()) != 1 {
		t.Fatalf("%v after %d chats", err, len(srv.Requests()))
	}
}

// TestOllamaToolsThroughDaemon: a device on real UDP, mcpd, the Ollama
// engine and the fake Ollama on real HTTP: the model's tool_calls reach
// the device as TOOL_CALL, its handler runs once, and Ollama's answer
// after the result streams to the device.
func TestOllamaToolsThroughDaemon(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{Calls: []api.ToolCallFunction{ollamaCall("read_sensor", map[string]any{"sensor": "soil"})}})
	o := newOllama(t, Config{}, srv)
	c := daemontest.Session(t, o, daemon.Config{}, device.Config{DeviceID: "garden"})
	actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer acancel()
	var runs atomic.Int64
	if err := c.DeclareTools(actx, []device.Tool{{Name: "read_sensor", Description: "Reads a sensor.", Schema: sensorSchema,
		Handler: func(_ context.Context, args []byte) (string, error) {
			runs.Add(1)
			return "41 % (" + string(args) + ")", nil
		}}}); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptToolsOn), Prompt: "Is the soil dry?"}
	if _, err := c.Ask(actx, m, func(b []byte) error { text.Write(b); return nil }); err != nil {
		t.Fatal(err)
	}
	if text.String() != strings.Join(ollamatest.DefaultTokens, "") || runs.Load() != 1 {
		t.Fatalf("answer %q, handler ran %d times", text.String(), runs.Load())
	}
	reqs := srv.Requests()
	if len(reqs) != 2 || reqs[1].Messages[len(reqs[1].Messages)-1].Content != `41 % ({"sensor":"soil"})` {
		t.Fatalf("Ollama saw %+v", reqs)
	}
}
