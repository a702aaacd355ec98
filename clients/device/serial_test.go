package device_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/ptytest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// serialPeer returns the daemon's end of a pty cable and a device client
// on the other end, opened as a serial port.
func serialPeer(t *testing.T, cfg device.Config) (*peer, *device.Client, *device.Stream) {
	t.Helper()
	master, tty := ptytest.Open(t) // a UART: the daemon's side is the master
	line, err := device.OpenSerial(tty, 115200)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { line.Close() })
	return newPeer(t, device.NewStream(master), cfg.Key), device.New(line, cfg), line
}

// TestAskSerial: the whole exchange over a pty opened as a serial port;
// line noise and a corrupt frame before the WELCOME make the device answer
// NACK BAD_FRAME (§7.1) and are otherwise skipped.
func TestAskSerial(t *testing.T) {
	p, c, _ := serialPeer(t, device.Config{DeviceID: "stm32-uart", MaxData: 64, Window: 1, RTO: device.SerialRTO(115200, 1)})
	ch := async(func() (struct{}, error) { return struct{}{}, c.Hello(context.Background()) })
	f, _ := p.expect(serialproto.CmdHello)

	body, _ := (&serialproto.Welcome{Version: 1, MaxData: 64, Window: 2, HeartbeatMS: 5000, MaxMessage: 4096}).AppendBody(nil)
	welcome, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdWelcome, Seq: f.Seq, Data: body})
	corrupt := append([]byte(nil), welcome...)
	corrupt[len(corrupt)-2] ^= 0x10                     // a bit of the body: the CRC-8 fails
	noise := []byte{0x00, 0xff, 0x13, 0x37, 0x55, 0x01} // a magic byte among it
	p.sendRaw(append(append(noise, corrupt...), welcome...))
	nack, m := p.expect(serialproto.CmdNack)
	if n := m.(*serialproto.Nack); n.Reason != serialproto.NackBadFrame {
		t.Fatalf("NACK %+v (seq %d), want BAD_FRAME", n, nack.Seq)
	}
	if _, err := await(t, ch); err != nil || c.Welcome().MaxData != 64 {
		t.Fatalf("Hello: %v, WELCOME %+v", err, c.Welcome())
	}

	prompt := "Grüße aus dem Gewächshaus 🌱 " + strings.Repeat("feucht? ", 30)
	var got strings.Builder
	asked := ask(context.Background(), c, prompt, func(b []byte) error { got.Write(b); return nil })
	m2, seq, n := p.expectInfer()
	if m2.Prompt != prompt || n < 4 {
		t.Fatalf("INFER in %d fragments: %q", n, m2.Prompt)
	}
	p.send(seq, &serialproto.Ack{Next: uint16(n)})
	p.stream(seq, "Gießen: Beet 3 zuerst.", 9)
	if _, err := await(t, asked); err != nil || got.String() != "Gießen: Beet 3 zuerst." {
		t.Fatalf("Ask: %v, %q", err, got.String())
	}
}

// TestSerialUnplugged: a cable pulled mid-request ends the call with the
// port's error at once, not after the retransmission budget.
func TestSerialUnplugged(t *testing.T) {
	p, c, _ := serialPeer(t, device.Config{RTO: time.Second})
	hello(t, p, c, serialproto.Welcome{})
	ch := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
	p.expect(serialproto.CmdPing)
	start := time.Now()
	p.link.Close() // the master: the line is gone
	_, err := await(t, ch)
	if err == nil || errors.Is(err, device.ErrTimeout) || time.Since(start) > wait/2 {
		t.Fatalf("Ping on a pulled cable: %v after %v", err, time.Since(start))
	}
}

// TestReplug: unplugged, frames go nowhere and nothing is heard; plugged
// into another line, the session goes on there.
func TestReplug(t *testing.T) {
	p1, _, line1 := serialPeer(t, device.Config{})
	r := device.NewReplug(line1)
	c := device.New(r, device.Config{RTO: time.Second})
	hello(t, p1, c, serialproto.Welcome{})

	if old := r.Unplug(); old != line1 {
		t.Fatal("Unplug returned another stream")
	}
	if err := r.Send([]byte{serialproto.Magic}); err != nil {
		t.Fatalf("Send while unplugged: %v", err)
	}
	start := time.Now()
	if _, err := r.Recv(time.Now().Add(60 * time.Millisecond)); !isTimeout(err) || time.Since(start) < 60*time.Millisecond {
		t.Fatalf("Recv while unplugged: %v after %v", err, time.Since(start))
	}

	p2, _, line2 := serialPeer(t, device.Config{})
	r.Plug(line2)
	ch := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
	f, _ := p2.expect(serialproto.CmdPing)
	p2.send(f.Seq, &serialproto.Pong{})
	if _, err := await(t, ch); err != nil {
		t.Fatalf("Ping after replugging: %v", err)
	}
}

func TestSerialRTO(t *testing.T) {
	// §7.1: 2 × window × T(263) + 100 ms; T(263) at 9600 baud is 273.96 ms.
	if got := device.SerialRTO(9600, 2); got < 1195*time.Millisecond || got > 1196*time.Millisecond {
		t.Fatalf("SerialRTO(9600, 2) = %v", got)
	}
	if device.SerialRTO(115200, 1) >= device.SerialRTO(115200, 4) || device.SerialRTO(0, 0) != device.SerialRTO(115200, 4) {
		t.Fatal("SerialRTO: window not counted, or defaults not applied")
	}
}

func TestOpenSerialMissing(t *testing.T) {
	if _, err := device.OpenSerial("/dev/does-not-exist-mcpd", 115200); err == nil || !strings.Contains(err.Error(), "does-not-exist") {
		t.Fatalf("want an error naming the port, got %v", err)
	}
}

// TestStreamHoleThroughNoise: a chunk the line corrupts copy after copy
// for longer than three heartbeats — as TestNoisyPacedUART's seed 4 did to
// a 133-byte TOKEN, a dozen resends at BER 1e-3 — is waited for, not
// given up as a silent daemon: the corrupt copies are the daemon sending
// (§10). The heartbeat is short so that three of them pass in 0.6 s.
func TestStreamHoleThroughNoise(t *testing.T) {
	p, c, _ := serialPeer(t, device.Config{DeviceID: "noisy", Window: 2, RTO: 50 * time.Millisecond})
	hello(t, p, c, serialproto.Welcome{HeartbeatMS: 200})
	seq, asked := p.askAccepted(context.Background(), c, "soil?", nil)

	const text = "soil 31 %"
	body, err := (&serialproto.Token{Chunk: 0, Text: []byte(text)}).AppendBody(nil)
	if err != nil {
		t.Fatal(err)
	}
	corrupt, err := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdToken, Seq: seq, Data: body})
	if err != nil {
		t.Fatal(err)
	}
	corrupt[9] ^= 0x04 // a bit of the text: the CRC-8 fails
	// Three heartbeats are 600 ms (6 keepalive intervals of 100 ms); the
	// copies come for 1.5 s, every 50 ms.
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		p.sendRaw(corrupt)
	}
	select {
	case r := <-asked:
		t.Fatalf("Ask ended during the corrupt copies: %v", r.err)
	default:
	}
	p.stream(seq, text, len(text))
	if _, err := await(t, asked); err != nil {
		t.Fatalf("Ask after 1.5 s of corrupt copies of its first chunk: %v", err)
	}
}

// TestUnparseableFrameIsCorruption: TestNoisyPacedUART's seed 24 — a TOKEN
// whose corruption the CRC-8 missed and whose text no longer ends on a
// character — is dropped like a frame that failed its CRC; the daemon's
// resend completes the answer. Before, Ask failed with "daemon sent a bad
// TOKEN".
func TestUnparseableFrameIsCorruption(t *testing.T) {
	p, c, _ := serialPeer(t, device.Config{DeviceID: "noisy", Window: 2, RTO: 50 * time.Millisecond})
	hello(t, p, c, serialproto.Welcome{})
	var got strings.Builder
	seq, asked := p.askAccepted(context.Background(), c, "Wetter?", func(b []byte) error { got.Write(b); return nil })

	const text = "Gießen"
	// The CRC-8 is computed over the mangled frame, as a corruption it
	// misses leaves it: chunk 0 cut inside the ß.
	bad := serialproto.Frame{Version: 1, Cmd: serialproto.CmdToken, Seq: seq, Data: append([]byte{0, 0}, text[:4]...)}
	if _, err := serialproto.ParseBody(bad.Cmd, bad.Data); err == nil {
		t.Fatal("the mangled TOKEN parses")
	}
	raw, err := serialproto.AppendFrame(nil, bad)
	if err != nil {
		t.Fatal(err)
	}
	p.sendRaw(raw)
	select {
	case r := <-asked:
		t.Fatalf("Ask ended on the mangled TOKEN: %v", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	p.stream(seq, text, len(text))
	if _, err := await(t, asked); err != nil || got.String() != text {
		t.Fatalf("Ask: %v, %q", err, got.String())
	}
}
