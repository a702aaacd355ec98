package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends/grammar"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestEndToEndSchema runs the real daemon command with the real llama.cpp
// engine on the random-weight model: a device naming a schema of the
// config by its id gets, over UDP, minified JSON of that schema ending in
// DONE STOP for every seed; an inline schema likewise; an unknown id is
// UNSUPPORTED_OPTION.
func TestEndToEndSchema(t *testing.T) {
	model := tinyModel(t)
	const schema = `{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3},"valve":{"enum":["open","closed"]},"why":{"type":"string","maxLength":12}}}`
	want, err := grammar.Parse([]byte(schema))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "mcpd.toml")
	if err := os.WriteFile(cfg, []byte("[schemas.fan]\nid = 1\njson = '"+schema+"'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	addr := "127.0.0.1:" + freePort(t)
	logs, stop := runMcpd(ctx, t, []string{"--config", cfg, "--model", model, "--threads", "1", "--listen-udp", addr, "--http", "off"}, noEnv)
	defer stop()
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := device.New(tr, device.Config{DeviceID: "fan", MaxData: 48, Window: 2})
	helloUntilReady(ctx, c)
	ask := func(m *serialproto.Infer) ([]byte, *serialproto.Done, error) {
		var got bytes.Buffer
		d, err := c.Ask(ctx, m, func(b []byte) error { got.Write(b); return nil })
		return got.Bytes(), d, err
	}
	for seed := range uint32(20) {
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptSchema).With(serialproto.OptSeed).
			With(serialproto.OptTemperature).With(serialproto.OptNewChat), SchemaID: 1, Seed: seed, Temperature: 1200, Prompt: "Fan?"}
		if seed%4 == 3 { // the same schema inline
			m.Set = serialproto.OptionSet(0).With(serialproto.OptSchemaJSON).With(serialproto.OptSeed).With(serialproto.OptTemperature).With(serialproto.OptNewChat)
			m.SchemaJSON = schema
		}
		got, d, err := ask(m)
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, logs.String())
		}
		if d.Reason != serialproto.StopEOS {
			t.Fatalf("seed %d: DONE %+v: %q", seed, d, got)
		}
		if err := want.Validate(got); err != nil {
			t.Fatalf("seed %d: %v: %q", seed, err, got)
		}
	}
	_, _, err = ask(&serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptSchema), SchemaID: 2, Prompt: "Fan?"})
	var perr *serialproto.Error
	if !errors.As(err, &perr) || perr.Code != serialproto.CodeUnsupportedOption {
		t.Fatalf("unknown schema id: %v", err)
	}
}
