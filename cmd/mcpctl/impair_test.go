package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// TestImpairCommand: a device talks to a protocol peer through `mcpctl
// impair` losing 20 % of datagrams both ways; the exchange still completes
// and the proxy reports what it did.
func TestImpairCommand(t *testing.T) {
	target, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	go func() { // answers every PING with a PONG, like mcpd would in a session
		buf := make([]byte, 512)
		for {
			n, from, err := target.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			f, err := sp.Decode(buf[:n])
			if err != nil || f.Cmd != sp.CmdPing {
				continue
			}
			body, _ := (&sp.Pong{Data: f.Data}).AppendBody(nil)
			raw, _ := sp.AppendFrame(nil, sp.Frame{Version: sp.Version1, Cmd: sp.CmdPong, Seq: f.Seq, Data: body})
			_, _ = target.WriteToUDPAddrPort(raw, from)
		}
	}()
	free, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	listen := free.LocalAddr().(*net.UDPAddr).AddrPort()
	free.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var out strings.Builder
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"impair", "-listen", listen.String(), "-target", target.LocalAddr().String(),
			"-loss", "0.2", "-dup", "0", "-reorder", "0", "-seed", "3"}, nil, &out, &out)
	}()
	time.Sleep(100 * time.Millisecond) // the proxy binds its port
	tr, err := device.DialUDP(netip.AddrPortFrom(listen.Addr(), listen.Port()).String())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for seq := range uint8(20) {
		raw, _ := sp.AppendFrame(nil, sp.Frame{Version: sp.Version1, Cmd: sp.CmdPing, Seq: seq + 1})
		for attempt := 0; ; attempt++ { // a device retransmits until it hears back
			if attempt == 20 {
				t.Fatalf("PING %d never answered through the proxy", seq)
			}
			_ = tr.Send(raw)
			f, err := tr.Recv(time.Now().Add(50 * time.Millisecond))
			if err == nil && f.Cmd == sp.CmdPong && f.Seq == seq+1 {
				break
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "impairing") || !strings.Contains(out.String(), "dropped") {
		t.Fatalf("output:\n%s", out.String())
	}
	var in, sent, dropped int
	for _, line := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "to mcpd"); ok {
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d in, %d out, %d dropped", &in, &sent, &dropped); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
		}
	}
	if dropped == 0 || in != sent+dropped || in < 20 {
		t.Fatalf("towards the peer: %d in, %d out, %d dropped at 20 %% loss:\n%s", in, sent, dropped, out.String())
	}
	t.Log(out.String())
}

// TestImpairReplay: with --replay 1 every datagram reaches the peer once
// more, --replay-after later: the peer sees each PING twice, the copy late.
func TestImpairReplay(t *testing.T) {
	target, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	type arrival struct {
		seq uint8
		at  time.Time
	}
	arrivals := make(chan arrival, 64)
	go func() {
		buf := make([]byte, 512)
		for {
			n, _, err := target.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if f, err := sp.Decode(buf[:n]); err == nil && f.Cmd == sp.CmdPing {
				arrivals <- arrival{f.Seq, time.Now()}
			}
		}
	}()
	free, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	listen := free.LocalAddr().(*net.UDPAddr).AddrPort()
	free.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out strings.Builder
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"impair", "-listen", listen.String(), "-target", target.LocalAddr().String(),
			"-loss", "0", "-dup", "0", "-reorder", "0", "-replay", "1", "-replay-after", "200ms", "-replay-jitter", "0s"}, nil, &out, &out)
	}()
	time.Sleep(100 * time.Millisecond) // the proxy binds its port
	tr, err := device.DialUDP(listen.String())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	raw, _ := sp.AppendFrame(nil, sp.Frame{Version: sp.Version1, Cmd: sp.CmdPing, Seq: 9})
	if err := tr.Send(raw); err != nil {
		t.Fatal(err)
	}
	var got []arrival
	for len(got) < 2 {
		select {
		case a := <-arrivals:
			got = append(got, a)
		case <-time.After(5 * time.Second):
			t.Fatalf("the peer saw %d copies of the PING, want the original and its replay", len(got))
		}
	}
	// The proxy times the copy from when it forwarded the original; this
	// reader timestamps both only when its goroutine runs, so the original
	// may be stamped a little late (199.97 ms was seen on a loaded box).
	// What matters is that the copy is late, not immediate.
	if late := got[1].at.Sub(got[0].at); got[1].seq != 9 || late < 180*time.Millisecond {
		t.Fatalf("the copy came %v after the original, want about 200 ms (at least 180)", late)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "1 replayed") {
		t.Fatalf("output:\n%s", out.String())
	}
}
