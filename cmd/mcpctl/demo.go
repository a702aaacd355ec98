package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/mcpd-project/mcpd/backends/grammar"
	"github.com/mcpd-project/mcpd/clients/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// runDemo is `make run`: it starts mcpd on a loopback UDP port and on a
// pseudo-terminal standing in for a UART, asks one question over each as a
// device would, prints the streamed answers, and stops everything it
// started.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpctl demo --mcpd PATH --model GGUF [flags]\n\nStarts mcpd with the in-process engine on loopback UDP and on a pseudo-\nterminal (a stand-in UART), asks a question over each, prints the streamed\nanswers and stops mcpd.\n\nFlags:")
		fs.PrintDefaults()
	}
	mcpd := fs.String("mcpd", "bin/mcpd", "the mcpd binary")
	model := fs.String("model", "testdata/models/tiny.gguf", "GGUF model for the native engine")
	question := fs.String("prompt", "What should I water first?", "the question each device asks")
	maxTokens := fs.Int("max-tokens", 24, "tokens per answer")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if _, err := os.Stat(*model); err != nil {
		return fmt.Errorf("model: %w (make models writes one)", err)
	}

	// The UART: the daemon opens the terminal side by name, the device
	// uses the master. Raw mode, as a UART carries bytes untouched.
	master, tty, err := pty.Open()
	if err != nil {
		return fmt.Errorf("pseudo-terminal: %w", err)
	}
	defer master.Close()
	defer tty.Close() // kept open so the master never sees a hangup
	if err := device.MakeRaw(tty); err != nil {
		return err
	}
	addr, err := freeUDPAddr()
	if err != nil {
		return err
	}

	// A schema the third device names by id (docs/protocol.md §11.4.1).
	cfgDir, err := os.MkdirTemp("", "mcpd-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cfgDir)
	cfgPath := filepath.Join(cfgDir, "mcpd.toml")
	if err := os.WriteFile(cfgPath, []byte(demoToolsConfig+"[schemas.fan]\nid = 1\njson = '"+demoSchema+"'\n"), 0o600); err != nil {
		return err
	}
	schema, err := grammar.Parse([]byte(demoSchema))
	if err != nil {
		return err
	}

	cmd := exec.CommandContext(ctx, *mcpd, "--config", cfgPath, "--backend", "native", "--model", *model,
		"--listen-udp", addr, "--serial", tty.Name()+":115200", "--http", "127.0.0.1:0", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mcpd: %w", err)
	}
	// exited is closed when mcpd ends (every waiter sees it); waitErr then
	// holds how it ended.
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return waitErr
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			return errors.New("mcpd did not stop on SIGTERM")
		}
	}
	fmt.Fprintf(stdout, "mcpd started: model %s, UDP %s, UART %s\n", *model, addr, tty.Name())

	m := &sp.Infer{Set: sp.OptionSet(0).With(sp.OptMaxTokens).With(sp.OptTemperature), MaxTokens: uint16(*maxTokens), Prompt: *question}
	askWith := func(name string, t device.Transport, cfg device.Config, m *sp.Infer, out io.Writer, before func(*device.Client) error) error {
		c := device.New(t, cfg)
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := helloWhenReady(ctx, c, exited, &waitErr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if before != nil {
			if err := before(c); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		fmt.Fprintf(stdout, "\n[%s] device %q asks: %s\n[%s] answer: ", name, cfg.DeviceID, m.Prompt, name)
		start := time.Now()
		done, err := c.Ask(ctx, m, func(b []byte) error { _, err := out.Write(b); return err })
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		el := time.Since(start)
		fmt.Fprintf(stdout, "\n[%s] DONE: %d tokens in %v (%.0f tokens/s), first token after %d ms, CRC-32C %08x verified\n",
			name, done.Tokens, el.Round(time.Millisecond), float64(done.Tokens)/el.Seconds(), done.TTFTMS, done.TextCRC32C)
		return nil
	}
	askOver := func(name string, t device.Transport, cfg device.Config, out io.Writer) error {
		return askWith(name, t, cfg, m, out, nil)
	}

	udp, err := device.DialUDP(addr)
	if err != nil {
		_ = stop()
		return err
	}
	defer udp.Close()
	errUDP := askOver("udp", udp, device.Config{DeviceID: "greenhouse-esp32", MaxData: 128, Window: 2}, stdout)
	uart := device.NewStream(master)
	errUART := askOver("uart", uart, device.Config{DeviceID: "stm32-uart", MaxData: 64, Window: 1, RTO: 300 * time.Millisecond}, stdout)

	// A constrained answer: one option byte names the schema, and the
	// random-weight model, which otherwise emits garbage, answers JSON of
	// it. The daemon sizes MAX_TOKENS for the longest answer.
	fmt.Fprintf(stdout, "\n[udp] schema 1 (fan) in mcpd.toml: %s\n", demoSchema)
	m = &sp.Infer{Set: sp.OptionSet(0).With(sp.OptTemperature).With(sp.OptSchema), SchemaID: 1,
		Prompt: "The greenhouse is 31 C. Set the fan and the valve."}
	var answer bytes.Buffer
	errJSON := askOver("udp", udp, device.Config{DeviceID: "fan-controller", MaxData: 64, Window: 2}, io.MultiWriter(stdout, &answer))
	if errJSON == nil {
		if err := schema.Validate(answer.Bytes()); err != nil {
			errJSON = fmt.Errorf("schema answer: %w", err)
		} else {
			fmt.Fprintf(stdout, "[udp] the answer is valid JSON of schema 1: %d bytes, minified ASCII\n", answer.Len())
		}
	}
	errTools := demoTools(askWith, udp, stdout)
	errStop := stop()
	fmt.Fprintln(stdout, "\nmcpd stopped.")
	return errors.Join(errUDP, errUART, errJSON, errTools, errStop)
}

// helloWhenReady says HELLO until mcpd answers: it may still be loading
// the model.
func helloWhenReady(ctx context.Context, c *device.Client, exited <-chan struct{}, waitErr *error) error {
	for {
		select {
		case <-exited:
			return fmt.Errorf("mcpd exited: %v", *waitErr)
		default:
		}
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Hello(hctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("mcpd did not answer HELLO: %w", err)
		}
	}
}

func freeUDPAddr() (string, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

// demoSchema is the schema `make run`'s third device names by id.
const demoSchema = `{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3},` +
	`"valve":{"enum":["open","closed"]},"reason":{"type":"string","maxLength":24}}}`
