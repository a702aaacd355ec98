package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/creack/pty"
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

	cmd := exec.CommandContext(ctx, *mcpd, "--backend", "native", "--model", *model,
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
	askOver := func(name string, t device.Transport, cfg device.Config) error {
		c := device.New(t, cfg)
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := helloWhenReady(ctx, c, exited, &waitErr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(stdout, "\n[%s] device %q asks: %s\n[%s] answer: ", name, cfg.DeviceID, *question, name)
		start := time.Now()
		done, err := c.Ask(ctx, m, func(b []byte) error { _, err := stdout.Write(b); return err })
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		el := time.Since(start)
		fmt.Fprintf(stdout, "\n[%s] DONE: %d tokens in %v (%.0f tokens/s), first token after %d ms, CRC-32C %08x verified\n",
			name, done.Tokens, el.Round(time.Millisecond), float64(done.Tokens)/el.Seconds(), done.TTFTMS, done.TextCRC32C)
		return nil
	}

	udp, err := device.DialUDP(addr)
	if err != nil {
		_ = stop()
		return err
	}
	defer udp.Close()
	errUDP := askOver("udp", udp, device.Config{DeviceID: "greenhouse-esp32", MaxData: 128, Window: 2})
	uart := device.NewStream(master)
	errUART := askOver("uart", uart, device.Config{DeviceID: "stm32-uart", MaxData: 64, Window: 1, RTO: 300 * time.Millisecond})
	errStop := stop()
	fmt.Fprintln(stdout, "\nmcpd stopped.")
	return errors.Join(errUDP, errUART, errStop)
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
