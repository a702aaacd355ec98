package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/clients/device/devicetest"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

const defaultPrompt = `You are the voice of a greenhouse. Sensor readings: air 24.5 °C, soil moisture 31 %, ` +
	`light 12 klx, CO₂ 640 ppm. The tomatoes in bed 3 look pale and the basil is wilting at noon. ` +
	`Explain in two short sentences what the gardener should check first, and why. ` +
	`Keep the answer under 40 words so it fits on a 2-line LCD. Respond in plain text without markdown. ` +
	`Do not repeat the readings back. Thanks! 🌱`

// runLoopback runs the MCPFrame exchange of docs/protocol.md §14 over real
// UDP sockets on 127.0.0.1: the device client of clients/device against
// the echoing protocol peer of clients/device/devicetest. The peer echoes
// the prompt back as its "answer" — it is a protocol stand-in, not a
// model; the daemon with a real engine replaces it.
func runLoopback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loopback", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpctl loopback [flags]\n\nA simulated device sends HELLO and a fragmented INFER to a protocol peer over\nloopback UDP, receives the streamed TOKEN frames under flow control and checks\nthe DONE checksum. The peer echoes the prompt; it is not a model.\n\nFlags:")
		fs.PrintDefaults()
	}
	prompt := fs.String("prompt", defaultPrompt, "the prompt to send")
	maxData := fs.Int("max-data", 64, "largest data field the device accepts (32..256)")
	window := fs.Int("window", 2, "frames the device can buffer (credit window, 1..255)")
	trace := fs.Bool("v", false, "print every frame")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	peer, err := devicetest.NewPeer()
	if err != nil {
		return err
	}
	defer peer.Close()
	udp, err := device.DialUDP(peer.Addr())
	if err != nil {
		return err
	}
	defer udp.Close()
	t := &tracer{Transport: udp, trace: *trace, log: stderr}
	c := device.New(t, device.Config{DeviceID: "sim-device-1", MaxData: uint16(*maxData), Window: uint8(*window)})

	start := time.Now()
	if err := c.Hello(ctx); err != nil {
		return fmt.Errorf("HELLO: %w", err)
	}
	infer := &sp.Infer{Set: sp.OptionSet(0).With(sp.OptMaxTokens).With(sp.OptSeed), MaxTokens: 64, Seed: 42, Prompt: *prompt}
	body, err := infer.AppendBody(nil)
	if err != nil {
		return err
	}
	var ttft time.Duration
	answered := 0
	done, err := c.Ask(ctx, infer, func(text []byte) error {
		if answered == 0 {
			ttft = time.Since(start)
		}
		answered += len(text)
		_, err := stdout.Write(text)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stderr, "loopback: prompt %d bytes in %d frame(s), answer %d bytes in %d TOKEN frames (max_data %d, window %d), CRC-32C %08x ok, first token %v, total %v\n",
		len(body), t.inferFrames, answered, done.Chunk, *maxData, *window, done.TextCRC32C, ttft.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))
	return nil
}

// tracer prints every frame with -v and counts the INFER fragments sent.
type tracer struct {
	device.Transport
	trace       bool
	log         io.Writer
	inferFrames int
}

func (t *tracer) Send(frame []byte) error {
	if f, err := sp.Decode(frame); err == nil {
		if f.Cmd == sp.CmdInfer {
			t.inferFrames++
		}
		if t.trace {
			fmt.Fprintf(t.log, "D→M %v  % x\n", f, frame)
		}
	}
	return t.Transport.Send(frame)
}

func (t *tracer) Recv(deadline time.Time) (sp.Frame, error) {
	f, err := t.Transport.Recv(deadline)
	if err == nil && t.trace {
		raw, _ := sp.AppendFrame(nil, f)
		fmt.Fprintf(t.log, "M→D %v  % x\n", f, raw)
	}
	return f, err
}
