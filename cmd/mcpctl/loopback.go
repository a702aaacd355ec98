package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// runLoopback opens two UDP sockets on 127.0.0.1 — a simulated device and a
// protocol peer that answers PING with PONG — and exchanges real frames.
func runLoopback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loopback", flag.ContinueOnError)
	fs.SetOutput(stderr)
	count := fs.Int("n", 1000, "PING/PONG round trips")
	if err := fs.Parse(args); err != nil {
		return err
	}
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer peer.Close()
	go echoPeer(peer)

	dev, err := net.DialUDP("udp", nil, peer.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return err
	}
	defer dev.Close()

	out := make([]byte, 0, serialproto.MaxFrameLen)
	in := make([]byte, serialproto.MaxFrameLen+1)
	start := time.Now()
	for i := range *count {
		if err := ctx.Err(); err != nil {
			return err
		}
		out, err = serialproto.AppendFrame(out[:0], serialproto.Frame{
			Version: serialproto.Version1, Cmd: serialproto.CmdPing, Seq: uint8(i), Data: []byte("ping"),
		})
		if err != nil {
			return err
		}
		if _, err := dev.Write(out); err != nil {
			return err
		}
		_ = dev.SetReadDeadline(time.Now().Add(time.Second))
		n, err := dev.Read(in)
		if err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		f, err := serialproto.Decode(in[:n])
		if err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		if f.Cmd != serialproto.CmdPong || f.Seq != uint8(i) {
			return fmt.Errorf("round trip %d: got %v, want PONG seq=%d", i, f, uint8(i))
		}
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "%d PING/PONG round trips over %s in %v (%.0f/s)\n",
		*count, peer.LocalAddr(), el.Round(time.Millisecond), float64(*count)/el.Seconds())
	return nil
}

func echoPeer(c *net.UDPConn) {
	in := make([]byte, serialproto.MaxFrameLen+1)
	out := make([]byte, 0, serialproto.MaxFrameLen)
	for {
		n, addr, err := c.ReadFromUDP(in)
		if err != nil {
			return
		}
		f, err := serialproto.Decode(in[:n])
		if err != nil || f.Cmd != serialproto.CmdPing {
			continue
		}
		f.Cmd = serialproto.CmdPong
		if out, err = serialproto.AppendFrame(out[:0], f); err == nil {
			_, _ = c.WriteToUDP(out, addr)
		}
	}
}
