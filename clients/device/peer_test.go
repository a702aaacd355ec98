package device_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// The tests drive a device.Client against peer, the daemon's side of the
// link played step by step by the test itself: it reads what the device
// sends and answers what the test says, so every frame on the wire is
// checked and every fault is put where the test wants it.

// wait bounds every wait of a test for a frame or for the client.
const wait = 5 * time.Second

// peer is the daemon's end of one link.
type peer struct {
	t    *testing.T
	link device.Transport // the daemon's side: udpEnd, or a Stream on a pty master

	key      serialproto.Key // set: the session is signed
	signer   *serialproto.Signer
	verifier *serialproto.Verifier
	reasm    *serialproto.Reassembler
}

// udpEnd is a peer's UDP socket: it answers whoever sent last, as the
// daemon answers a device at its address.
type udpEnd struct {
	conn *net.UDPConn
	dev  netip.AddrPort
	buf  [serialproto.MaxFrameLen + 1]byte
}

func (u *udpEnd) Send(frame []byte) error {
	if !u.dev.IsValid() {
		return errors.New("udpEnd: no device heard yet")
	}
	_, err := u.conn.WriteToUDPAddrPort(frame, u.dev)
	return err
}

func (u *udpEnd) Recv(deadline time.Time) (serialproto.Frame, error) {
	if err := u.conn.SetReadDeadline(deadline); err != nil {
		return serialproto.Frame{}, err
	}
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(u.buf[:])
		if err != nil {
			return serialproto.Frame{}, err
		}
		u.dev = from
		if f, err := serialproto.Decode(u.buf[:n]); err == nil {
			return f, nil
		}
	}
}

func (u *udpEnd) Close() error { return u.conn.Close() }

// newUDPPeer returns a peer on a loopback UDP port and a device client
// connected to it.
func newUDPPeer(t *testing.T, cfg device.Config) (*peer, *device.Client) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	udp, err := device.DialUDP(conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	return newPeer(t, &udpEnd{conn: conn}, cfg.Key), device.New(udp, cfg)
}

func newPeer(t *testing.T, link device.Transport, key serialproto.Key) *peer {
	return &peer{t: t, link: link, key: key, reasm: serialproto.NewReassembler(serialproto.ReassemblerConfig{})}
}

// recv returns the device's next frame, its signature checked and removed
// in a signed session, and its body parsed (nil for an INFER fragment).
func (p *peer) recv() (serialproto.Frame, serialproto.Message) {
	p.t.Helper()
	f, err := p.link.Recv(time.Now().Add(wait))
	if err != nil {
		p.t.Fatalf("peer: no frame from the device: %v", err)
	}
	if p.verifier != nil {
		if f, _, _, err = p.verifier.Verify(f); err != nil {
			p.t.Fatalf("peer: %v frame fails verification: %v", f.Cmd, err)
		}
	}
	if f.Flags&serialproto.FlagFragment != 0 {
		return f, nil
	}
	m, err := serialproto.ParseBody(f.Cmd, f.Data)
	if err != nil {
		p.t.Fatalf("peer: device sent a bad %v: %v", f.Cmd, err)
	}
	return f, m
}

// expect returns the device's next frame of command cmd, skipping others
// (retransmissions a slow test provoked) for at most wait.
func (p *peer) expect(cmd serialproto.Command) (serialproto.Frame, serialproto.Message) {
	p.t.Helper()
	for end := time.Now().Add(wait); time.Now().Before(end); {
		if f, m := p.recv(); f.Cmd == cmd {
			return f, m
		}
	}
	p.t.Fatalf("peer: no %v from the device", cmd)
	return serialproto.Frame{}, nil
}

// expectInfer reads INFER fragments until one message is whole and returns
// it, its seq and its fragment count. Each call reassembles afresh, so a
// retry under the same seq is a message again.
func (p *peer) expectInfer() (*serialproto.Infer, uint8, int) {
	p.t.Helper()
	p.reasm = serialproto.NewReassembler(serialproto.ReassemblerConfig{})
	for end := time.Now().Add(wait); time.Now().Before(end); {
		f, _ := p.expect(serialproto.CmdInfer)
		body, _, err := p.reasm.Add(time.Now(), f.Cmd, f.Seq, f.Data)
		if err != nil {
			p.t.Fatalf("peer: INFER fragment: %v", err)
		}
		if body != nil {
			m, err := serialproto.ParseBody(serialproto.CmdInfer, body)
			if err != nil {
				p.t.Fatalf("peer: INFER body: %v", err)
			}
			return m.(*serialproto.Infer), f.Seq, int(f.Data[1])
		}
	}
	p.t.Fatal("peer: no whole INFER from the device")
	return nil, 0, 0
}

// send answers with m under seq, signed in a signed session.
func (p *peer) send(seq uint8, m serialproto.Message) {
	p.t.Helper()
	body, err := m.AppendBody(nil)
	if err != nil {
		p.t.Fatal(err)
	}
	f := serialproto.Frame{Version: serialproto.Version1, Cmd: m.Command(), Seq: seq, Data: body}
	var raw []byte
	if p.signer != nil {
		raw, err = p.signer.AppendSigned(nil, f)
	} else {
		raw, err = serialproto.AppendFrame(nil, f)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.sendRaw(raw)
}

func (p *peer) sendRaw(raw []byte) {
	p.t.Helper()
	if err := p.link.Send(raw); err != nil {
		p.t.Fatalf("peer: send: %v", err)
	}
}

// welcome reads the device's HELLO and accepts it with w (defaults filled
// in), signing the session when the peer has a key. It returns the HELLO.
func (p *peer) welcome(w serialproto.Welcome) (serialproto.Frame, *serialproto.Hello) {
	p.t.Helper()
	f, err := p.link.Recv(time.Now().Add(wait))
	if err != nil || f.Cmd != serialproto.CmdHello {
		p.t.Fatalf("peer: want HELLO, got %v, %v", f.Cmd, err)
	}
	signed := f
	if f.Flags&serialproto.FlagSigned != 0 {
		f.Data = f.Data[:len(f.Data)-serialproto.SignatureLen]
	}
	m, err := serialproto.ParseBody(f.Cmd, f.Data)
	if err != nil {
		p.t.Fatal(err)
	}
	hello := m.(*serialproto.Hello)
	if w.Version == 0 {
		w.Version = 1
	}
	if w.MaxData == 0 {
		w.MaxData = serialproto.MaxData
	}
	if w.Window == 0 {
		w.Window = 8
	}
	if w.HeartbeatMS == 0 {
		w.HeartbeatMS = 5000
	}
	if w.MaxMessage == 0 {
		w.MaxMessage = serialproto.DefaultMaxMessage
	}
	if !p.key.IsZero() {
		// §9.1: the HELLO is signed with boot_nonce ‖ 0, the session with
		// boot_nonce ‖ daemon_nonce.
		v, err := serialproto.NewVerifier(p.key, serialproto.DeviceToDaemon, serialproto.MakeNonce(hello.BootNonce, 0))
		if err != nil {
			p.t.Fatal(err)
		}
		if _, _, _, err := v.Verify(signed); err != nil {
			p.t.Fatalf("peer: HELLO signature: %v", err)
		}
		w.Features |= serialproto.FeatureSign
		if w.DaemonNonce == 0 {
			w.DaemonNonce = 0x5eed
		}
		nonce := serialproto.MakeNonce(hello.BootNonce, w.DaemonNonce)
		if p.signer, err = serialproto.NewSigner(p.key, serialproto.DaemonToDevice, nonce, 0, 0); err != nil {
			p.t.Fatal(err)
		}
		if p.verifier, err = serialproto.NewVerifier(p.key, serialproto.DeviceToDaemon, nonce); err != nil {
			p.t.Fatal(err)
		}
	}
	p.send(f.Seq, &w)
	return f, hello
}

// stream answers request seq with text in TOKEN frames of at most n bytes
// and a DONE, waiting for the device's ACK of each chunk, and returns the
// DONE sent.
func (p *peer) stream(seq uint8, text string, n int) *serialproto.Done {
	p.t.Helper()
	var chunk uint16
	for rest := []byte(text); len(rest) > 0; chunk++ {
		piece := rest[:min(n, len(rest))]
		rest = rest[len(piece):]
		p.send(seq, &serialproto.Token{Chunk: chunk, Text: piece})
		p.expectAck(seq, chunk+1)
	}
	done := &serialproto.Done{Chunk: chunk, Tokens: uint32(chunk), TextBytes: uint32(len(text)), TextCRC32C: serialproto.CRC32C([]byte(text))}
	p.send(seq, done)
	p.expectAck(seq, chunk+1)
	return done
}

// expectAck waits for the device's ACK of request seq up to chunk next.
func (p *peer) expectAck(seq uint8, next uint16) {
	p.t.Helper()
	for end := time.Now().Add(wait); time.Now().Before(end); {
		f, m := p.expect(serialproto.CmdAck)
		if a := m.(*serialproto.Ack); f.Seq == seq && a.Next == next {
			return
		}
	}
	p.t.Fatalf("peer: no ACK %d of request %d", next, seq)
}

// expectSACK reads the next ACK of request seq and checks its next and
// bitmap exactly.
func (p *peer) expectSACK(seq uint8, next uint16, sack []byte) {
	p.t.Helper()
	f, m := p.expect(serialproto.CmdAck)
	if a := m.(*serialproto.Ack); f.Seq != seq || a.Next != next || !bytes.Equal(a.SACK, sack) {
		p.t.Fatalf("peer: ACK %d %x of request %d, want %d %x", a.Next, a.SACK, f.Seq, next, sack)
	}
}

// result is what a client call running in the background returned.
type result[T any] struct {
	v   T
	err error
}

// async runs fn in the background; await gets its result.
func async[T any](fn func() (T, error)) <-chan result[T] {
	ch := make(chan result[T], 1)
	go func() {
		v, err := fn()
		ch <- result[T]{v, err}
	}()
	return ch
}

func await[T any](t *testing.T, ch <-chan result[T]) (T, error) {
	t.Helper()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(2 * wait):
		t.Fatal("the client call did not return")
		panic("unreachable")
	}
}

// ask runs c.Ask of prompt in the background; a nil onText discards the
// text.
func ask(ctx context.Context, c *device.Client, prompt string, onText func([]byte) error) <-chan result[*serialproto.Done] {
	if onText == nil {
		onText = func([]byte) error { return nil }
	}
	return async(func() (*serialproto.Done, error) { return c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, onText) })
}

// askAccepted is ask, its INFER read and accepted with the ACK of its
// fragments; it returns the request's seq.
func (p *peer) askAccepted(ctx context.Context, c *device.Client, prompt string, onText func([]byte) error) (uint8, <-chan result[*serialproto.Done]) {
	p.t.Helper()
	ch := ask(ctx, c, prompt, onText)
	m, seq, n := p.expectInfer()
	if m.Prompt != prompt {
		p.t.Fatalf("peer: prompt %q, want %q", m.Prompt, prompt)
	}
	p.send(seq, &serialproto.Ack{Next: uint16(n)})
	return seq, ch
}

// hello runs c.Hello against p with WELCOME w and fails the test on error.
func hello(t *testing.T, p *peer, c *device.Client, w serialproto.Welcome) *serialproto.Hello {
	t.Helper()
	ch := async(func() (struct{}, error) { return struct{}{}, c.Hello(context.Background()) })
	_, h := p.welcome(w)
	if _, err := await(t, ch); err != nil {
		t.Fatalf("Hello: %v", err)
	}
	return h
}

// isTimeout reports a transport's deadline error.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
