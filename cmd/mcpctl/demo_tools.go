package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/mcpd-project/mcpd/clients/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// demoToolsConfig is the demo's mcpd.toml part for device tools: the model
// must call a tool in its first generation of a TOOLS_ON request. The
// demo's model has random weights and would never call one on its own.
const demoToolsConfig = "[limits]\ntool_choice = \"first\"\n"

// demoTools is the fourth device of `make run`: it declares a sensor read
// (docs/protocol.md §16), asks with TOOLS_ON, and answers the model's call
// from its handler while the answer streams. One tool: the random model's
// choice among several would be noise.
func demoTools(ask func(name string, t device.Transport, cfg device.Config, m *sp.Infer, out io.Writer, before func(*device.Client) error) error,
	udp device.Transport, stdout io.Writer) error {
	calls := 0
	tools := []device.Tool{
		{Name: "read_sensor", Description: "Reads one of the greenhouse's sensors; answers its value.",
			Schema: `{"type":"object","properties":{"sensor":{"enum":["soil","air"]}}}`,
			Handler: func(_ context.Context, args []byte) (string, error) {
				calls++
				res := `{"soil_moisture_pct":41}`
				if string(args) == `{"sensor":"air"}` {
					res = `{"air_c":22.5}`
				}
				fmt.Fprintf(stdout, "\n[udp] the model calls the device's tool: read_sensor %s → the device answers %s\n[udp] answer: ", args, res)
				return res, nil
			}},
	}
	fmt.Fprintf(stdout, "\n[udp] device \"soil-probe\" declares its tool read_sensor (TOOLS); mcpd.toml has tool_choice = \"first\",\n"+
		"[udp] so the model must call it before it answers (its weights are random: it would not decide to on its own)")
	m := &sp.Infer{Set: sp.OptionSet(0).With(sp.OptTemperature).With(sp.OptMaxTokens).With(sp.OptToolsOn), MaxTokens: 24,
		Prompt: "Is the soil dry? Should I water?"}
	err := ask("udp", udp, device.Config{DeviceID: "soil-probe", MaxData: 128, Window: 2}, m, stdout,
		func(c *device.Client) error { return c.DeclareTools(context.Background(), tools) })
	var perr *sp.Error
	if errors.As(err, &perr) && perr.Code == sp.CodeToolLimit {
		// The random model may keep calling: mcpd stops it at max_tool_calls.
		fmt.Fprintf(stdout, "\n[udp] mcpd ended the request with TOOL_LIMIT after %d calls (a model looping on a tool)\n", calls)
		err = nil
	}
	if err == nil && calls == 0 {
		err = errors.New("tools: the model called no tool")
	}
	if err == nil {
		fmt.Fprintf(stdout, "[udp] %d tool call(s) answered by the device, each run once; the text after them is the random model's\n", calls)
	}
	return err
}
