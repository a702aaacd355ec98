package main

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// callEngine calls the request's first tool with fixed arguments until it
// has a result, then answers "result: " and the result.
type callEngine struct{ wordEngine }

func (callEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	last := req.Messages[len(req.Messages)-1]
	if len(req.Tools) > 0 && last.Role != backends.RoleTool {
		return backends.Result{Tokens: 1, Call: &backends.ToolCall{Tool: 0, Name: req.Tools[0].Name, Args: []byte(`{"sensor":"soil"}`)}}, nil
	}
	return backends.Result{Tokens: 1}, emit([]byte("result: " + last.Content))
}

// TestAskTool: `mcpctl ask --tool` runs a shell command as the device's
// tool: the arguments arrive on stdin and in $MCPD_TOOL_ARGS, its stdout is
// what the model reads, a failing command is reported to the model.
func TestAskTool(t *testing.T) {
	addr := startDaemon(t, callEngine{})
	const schema = `{"type":"object","properties":{"sensor":{"enum":["soil","air"]}}}`
	out, errOut, err := runCmd(t, "", "ask", "--udp", addr, "--tool", `read_sensor=cat; echo " $MCPD_TOOL_NAME"`,
		"--tool-schema", "read_sensor="+schema, "--tool-desc", "read_sensor=Reads a sensor.", "Is the soil dry?")
	if err != nil {
		t.Fatal(err, errOut)
	}
	if want := `result: {"sensor":"soil"} read_sensor`; strings.TrimSpace(out) != want {
		t.Fatalf("stdout %q, want %q", out, want)
	}
	if !strings.Contains(errOut, `tool read_sensor {"sensor":"soil"} → "{\"sensor\":\"soil\"} read_sensor"`) {
		t.Fatalf("stderr %q", errOut)
	}
	out, errOut, err = runCmd(t, "", "ask", "--udp", addr, "--tool", "read_sensor=echo broken >&2; exit 3",
		"--tool-schema", "read_sensor="+schema, "q")
	if err != nil || strings.TrimSpace(out) != "result: error: broken" || !strings.Contains(errOut, "failed: broken") {
		t.Fatalf("failing tool: %q %q %v", out, errOut, err)
	}
	if _, _, err := runCmd(t, "", "ask", "--udp", addr, "--tool-desc", "x=y", "q"); err == nil {
		t.Fatal("--tool-desc without --tool accepted")
	}
}

// TestDecodeToolFrames: decode shows a TOOL_CALL's indexes (0 included)
// and its arguments as text, and a TOOL_RESULT's status and result.
func TestDecodeToolFrames(t *testing.T) {
	frame := func(cmd sp.Command, m sp.Message) string {
		body, err := m.AppendBody(nil)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := sp.AppendFrame(nil, sp.Frame{Version: 1, Cmd: cmd, Seq: 5, Data: body})
		if err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(raw)
	}
	out, _, err := runCmd(t, "", "decode",
		frame(sp.CmdToolCall, &sp.ToolCall{Chunk: 2, Args: []byte(`{"sensor":"soil"}`)}),
		frame(sp.CmdToolResult, &sp.ToolResult{Call: 0, Status: sp.ToolFailed, Result: []byte("offline")}))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`TOOL_CALL[-] seq=5 len=21  chunk=2 call=0 tool=0 args="{\"sensor\":\"soil\"}"`, `call=0 status=1 result="offline"`} {
		if !strings.Contains(out, want) {
			t.Errorf("decode output lacks %s:\n%s", want, out)
		}
	}
}
