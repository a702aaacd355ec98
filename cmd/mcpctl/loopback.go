package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	sp "github.com/mcpd-project/mcpd/serialproto"
)

const defaultPrompt = `You are the voice of a greenhouse. Sensor readings: air 24.5 °C, soil moisture 31 %, ` +
	`light 12 klx, CO₂ 640 ppm. The tomatoes in bed 3 look pale and the basil is wilting at noon. ` +
	`Explain in two short sentences what the gardener should check first, and why. ` +
	`Keep the answer under 40 words so it fits on a 2-line LCD. Respond in plain text without markdown. ` +
	`Do not repeat the readings back. Thanks! 🌱`

// runLoopback runs the MCPFrame exchange of docs/protocol.md §14 over real
// UDP sockets on 127.0.0.1: a simulated device against a protocol peer.
// The peer echoes the prompt back as its "answer" — it is a protocol
// stand-in, not a model; the daemon with a real engine replaces it.
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	peerConn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer peerConn.Close()
	go (&echoPeer{conn: peerConn}).serve()

	conn, err := net.DialUDP("udp", nil, peerConn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return err
	}
	defer conn.Close()
	d := &simDevice{conn: conn, trace: *trace, log: stderr}
	return d.ask(ctx, *prompt, uint16(*maxData), uint8(*window), stdout)
}

// simDevice is the simulated microcontroller of the loopback demo.
type simDevice struct {
	conn  *net.UDPConn
	trace bool
	log   io.Writer
	seq   uint8
	out   []byte
	in    [sp.MaxFrameLen + 1]byte
}

func (d *simDevice) send(f sp.Frame) error {
	var err error
	if d.out, err = sp.AppendFrame(d.out[:0], f); err != nil {
		return err
	}
	if d.trace {
		fmt.Fprintf(d.log, "D→M %v  % x\n", f, d.out)
	}
	_, err = d.conn.Write(d.out)
	return err
}

func (d *simDevice) sendMsg(seq uint8, m sp.Message) error {
	body, err := m.AppendBody(nil)
	if err != nil {
		return err
	}
	return d.send(sp.Frame{Version: sp.Version1, Cmd: m.Command(), Seq: seq, Data: body})
}

// recv waits for the next frame with a deadline, parsing its body.
func (d *simDevice) recv(ctx context.Context) (sp.Frame, sp.Message, error) {
	deadline := time.Now().Add(2 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = d.conn.SetReadDeadline(deadline)
	n, err := d.conn.Read(d.in[:])
	if err != nil {
		return sp.Frame{}, nil, fmt.Errorf("waiting for the peer: %w", err)
	}
	f, err := sp.Decode(d.in[:n])
	if err != nil {
		return sp.Frame{}, nil, err
	}
	if d.trace {
		fmt.Fprintf(d.log, "M→D %v  % x\n", f, d.in[:n])
	}
	m, err := sp.ParseBody(f.Cmd, f.Data)
	return f, m, err
}

func (d *simDevice) ask(ctx context.Context, prompt string, maxData uint16, window uint8, stdout io.Writer) error {
	start := time.Now()
	hello := &sp.Hello{MinVersion: 1, MaxVersion: 1, MaxData: maxData, Window: window, BootNonce: uint32(start.UnixNano()), DeviceID: "sim-device-1"}
	if err := d.sendMsg(d.seq, hello); err != nil {
		return err
	}
	_, m, err := d.recv(ctx)
	if err != nil {
		return err
	}
	welcome, ok := m.(*sp.Welcome)
	if !ok {
		return fmt.Errorf("expected WELCOME, got %s", m.Command())
	}

	// INFER, fragmented to the peer's max_data when the prompt needs it.
	d.seq++
	infer := &sp.Infer{Set: sp.OptionSet(0).With(sp.OptMaxTokens).With(sp.OptSeed), MaxTokens: 64, Seed: 42, Prompt: prompt}
	body, err := infer.AppendBody(nil)
	if err != nil {
		return err
	}
	datas, err := sp.Fragments(body, sp.PieceSize(int(welcome.MaxData), false))
	if err != nil {
		return err
	}
	for _, data := range datas {
		f := sp.Frame{Version: welcome.Version, Cmd: sp.CmdInfer, Flags: sp.FlagFragment, Seq: d.seq, Data: data}
		if err := d.send(f); err != nil {
			return err
		}
	}

	// ACK, then the stream; acknowledge every chunk, as a device with a
	// small window must.
	var text strings.Builder
	var next uint16
	var ttft time.Duration
	for {
		f, m, err := d.recv(ctx)
		if err != nil {
			return err
		}
		if f.Seq != d.seq {
			continue
		}
		switch m := m.(type) {
		case *sp.Ack: // the INFER was accepted: next counts its fragments
			if int(m.Next) != len(datas) {
				return fmt.Errorf("ACK of the INFER says %d fragments, sent %d", m.Next, len(datas))
			}
		case *sp.Token:
			if m.Chunk != next {
				continue // go-back-N: the peer repeats from next
			}
			if next == 0 {
				ttft = time.Since(start)
			}
			next++
			text.Write(m.Text)
			fmt.Fprintf(stdout, "%s", m.Text)
			if err := d.sendMsg(d.seq, &sp.Ack{Next: next, Window: window}); err != nil {
				return err
			}
		case *sp.Done:
			if err := d.sendMsg(d.seq, &sp.Ack{Next: m.Chunk + 1, Window: window}); err != nil {
				return err
			}
			fmt.Fprintln(stdout)
			got := []byte(text.String())
			if int(m.TextBytes) != len(got) || m.TextCRC32C != sp.CRC32C(got) {
				return fmt.Errorf("stream checksum mismatch: DONE says %d bytes crc %08x, received %d bytes crc %08x",
					m.TextBytes, m.TextCRC32C, len(got), sp.CRC32C(got))
			}
			fmt.Fprintf(d.log, "loopback: prompt %d bytes in %d frame(s), answer %d bytes in %d TOKEN frames (max_data %d, window %d), CRC-32C %08x ok, first token %v, total %v\n",
				len(body), len(datas), len(got), m.Chunk, maxData, window, m.TextCRC32C, ttft.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))
			return nil
		case *sp.Error:
			return fmt.Errorf("peer answered ERROR %w", m)
		}
	}
}

// echoPeer answers HELLO, reassembles INFER and streams the prompt back in
// TOKEN frames, honouring the device's max_data and credit window.
type echoPeer struct {
	conn *net.UDPConn
}

type stream struct {
	seq    uint8
	chunks [][]byte // the data fields of TOKEN… and the final DONE
	next   int      // first chunk not yet acknowledged
	sent   int      // chunks sent so far
	window int
}

func (p *echoPeer) serve() {
	var (
		in       [sp.MaxFrameLen + 1]byte
		out      []byte
		maxData  = sp.MaxData
		window   = 1
		reasm    = sp.NewReassembler(sp.ReassemblerConfig{})
		st       *stream
		peerAddr *net.UDPAddr
	)
	send := func(cmd sp.Command, seq uint8, data []byte) {
		var err error
		if out, err = sp.AppendFrame(out[:0], sp.Frame{Version: sp.Version1, Cmd: cmd, Seq: seq, Data: data}); err == nil {
			_, _ = p.conn.WriteToUDP(out, peerAddr)
		}
	}
	sendMsg := func(seq uint8, m sp.Message) {
		if body, err := m.AppendBody(nil); err == nil {
			send(m.Command(), seq, body)
		}
	}
	pump := func() { // send what the device's window allows
		for st != nil && st.sent < len(st.chunks) && st.sent < st.next+st.window {
			cmd := sp.CmdToken
			if st.sent == len(st.chunks)-1 {
				cmd = sp.CmdDone
			}
			send(cmd, st.seq, st.chunks[st.sent])
			st.sent++
		}
	}
	for {
		n, addr, err := p.conn.ReadFromUDP(in[:])
		if err != nil {
			return
		}
		peerAddr = addr
		f, err := sp.Decode(in[:n])
		if err != nil {
			continue
		}
		body, fragments := f.Data, 1
		if f.Flags&sp.FlagFragment != 0 { // an INFER message (§6)
			if body, _, err = reasm.Add(time.Now(), f.Cmd, f.Seq, f.Data); err != nil || body == nil {
				continue
			}
			fragments = int(f.Data[1])
		}
		m, err := sp.ParseBody(f.Cmd, body)
		if err != nil {
			sendMsg(f.Seq, sp.NewError(sp.CodeMalformed, "bad body"))
			continue
		}
		switch m := m.(type) {
		case *sp.Hello:
			maxData, window = int(m.MaxData), int(m.Window)
			sendMsg(f.Seq, &sp.Welcome{Version: 1, MaxData: sp.MaxData, Window: 255, HeartbeatMS: 5000, MaxMessage: sp.DefaultMaxMessage, DaemonNonce: 1})
		case *sp.Infer:
			sendMsg(f.Seq, &sp.Ack{Next: uint16(fragments)}) // §11.9: the fragment count
			st = &stream{seq: f.Seq, chunks: echoChunks(m.Prompt, maxData), window: window}
			pump()
		case *sp.Ack:
			if st != nil && f.Seq == st.seq {
				st.next, st.window = max(st.next, int(m.Next)), int(m.Window)
				pump()
			}
		case *sp.Ping:
			sendMsg(f.Seq, &sp.Pong{Data: m.Data})
		default:
			sendMsg(f.Seq, sp.NewError(sp.CodeUnexpected, "not handled by the echo peer"))
		}
	}
}

// echoChunks cuts the echoed prompt, word by word as an engine emits
// tokens, into TOKEN bodies that fit maxData without splitting a UTF-8
// character, and ends with the DONE body.
func echoChunks(prompt string, maxData int) [][]byte {
	var tb sp.TextBuffer
	var chunks [][]byte
	var all []byte
	limit := sp.BodyLimit(maxData, false) - 2
	words := strings.SplitAfter(prompt, " ")
	for i, w := range words {
		_, _ = tb.WriteString(w)
		final := i == len(words)-1
		for tb.Len() >= limit || (final && tb.Len() > 0) {
			text := tb.Next(nil, limit, final)
			if len(text) == 0 {
				break
			}
			all = append(all, text...)
			body, _ := (&sp.Token{Chunk: uint16(len(chunks)), Text: text}).AppendBody(nil)
			chunks = append(chunks, body)
		}
	}
	done, _ := (&sp.Done{Chunk: uint16(len(chunks)), Reason: sp.StopEOS, Tokens: uint32(len(words)),
		TextBytes: uint32(len(all)), TextCRC32C: sp.CRC32C(all)}).AppendBody(nil)
	return append(chunks, done)
}
