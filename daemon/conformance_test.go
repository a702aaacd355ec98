package daemon

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// The failures an implementation written from docs/protocol.md alone found
// in the daemon (issue 17), one test each.

// capturingTransport keeps a copy of every INFER fragment the device sends,
// for a test to replay late.
type capturingTransport struct {
	device.Transport
	infers [][]byte
}

func (c *capturingTransport) wrap(t device.Transport) device.Transport {
	c.Transport = t
	return c
}

func (c *capturingTransport) Send(raw []byte) error {
	if f, err := serialproto.Decode(raw); err == nil && f.Cmd == serialproto.CmdInfer {
		c.infers = append(c.infers, append([]byte(nil), raw...))
	}
	return c.Transport.Send(raw)
}

// answer sends raw and returns the daemon's first frame with seq, skipping
// others (a late ACK of an earlier request).
func answer(t *testing.T, tr device.Transport, raw []byte, seq uint8) serialproto.Frame {
	t.Helper()
	if err := tr.Send(raw); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		f, err := tr.Recv(deadline)
		if err != nil {
			t.Fatalf("no answer with seq %d: %v", seq, err)
		}
		if f.Seq == seq {
			f.Data = bytes.Clone(f.Data)
			return f
		}
	}
}

// errorOf parses f as an ERROR, failing the test if it is something else.
func errorOf(t *testing.T, f serialproto.Frame) *serialproto.Error {
	t.Helper()
	var e serialproto.Error
	if f.Cmd != serialproto.CmdError || e.UnmarshalBody(f.Data) != nil {
		t.Fatalf("want an ERROR, got %v", f)
	}
	return &e
}

func rawFrame(t *testing.T, f serialproto.Frame) []byte {
	t.Helper()
	raw, err := serialproto.AppendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestStaleRequestsNeverRunAgain: 40 INFERs into a session, a
// byte-identical copy of the 2nd arrives — its seq now outside the 32 the
// daemon remembers and not after the newest. It was ACKed and run again;
// it must get ERROR UNEXPECTED (§5) and never run twice. The same for a
// new prompt under a stale seq and for a stale PING, while a PING inside
// the history is answered, again and again.
func TestStaleRequestsNeverRunAgain(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{}, e)
	tr := &capturingTransport{}
	c, udp := dialVia(t, addr, device.Config{DeviceID: "stale"}, tr.wrap)
	for i := range 40 {
		if text, _, err := ask(t, c, "reading "+string(rune('A'+i))); err != nil || text == "" {
			t.Fatalf("request %d: %q %v", i, text, err)
		}
	}
	if e.calls.Load() != 40 || len(tr.infers) < 2 {
		t.Fatalf("%d runs, %d INFERs captured", e.calls.Load(), len(tr.infers))
	}
	old := tr.infers[1] // the 2nd request, 39 seqs behind the newest
	oldSeq := old[5]
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"a copy of the 2nd INFER", old},
		{"a new prompt under a stale seq", rawInfer(t, oldSeq+1, "never asked before")},
		{"a stale PING", rawFrame(t, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Seq: oldSeq + 2, Data: []byte("hb")})},
		{"a stale STATUS", rawFrame(t, serialproto.Frame{Version: 1, Cmd: serialproto.CmdStatus, Seq: oldSeq + 3})},
	} {
		seq := tc.raw[5]
		if e := errorOf(t, answer(t, udp, tc.raw, seq)); e.Code != serialproto.CodeUnexpected {
			t.Errorf("%s (seq %d): %s, want UNEXPECTED", tc.name, seq, e.Code)
		}
	}
	if n := e.calls.Load(); n != 40 {
		t.Fatalf("the engine ran %d times for 40 requests: a stale INFER ran", n)
	}
	// A PING after the newest, and its copy inside the history, are answered.
	ping := rawFrame(t, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Seq: oldSeq + 40, Data: []byte("hb")})
	for i := range 2 {
		if f := answer(t, udp, ping, oldSeq+40); f.Cmd != serialproto.CmdPong {
			t.Fatalf("PING %d: %v, want PONG", i, f)
		}
	}
}

// TestWrongDirectionIsUnexpected: a device-sent WELCOME, TOKEN, DONE or
// STATUS_REPLY is answered UNEXPECTED whatever its body holds, with a
// session or without: the direction is judged from the command alone,
// before the body (§4). A malformed body got MALFORMED.
func TestWrongDirectionIsUnexpected(t *testing.T) {
	_, addr := startDaemon(t, Config{}, &testEngine{})
	bodies := map[serialproto.Command][][]byte{
		serialproto.CmdWelcome:     {nil, {1, 2, 3}},
		serialproto.CmdToken:       {nil, {0}, {0, 0, 0xFF}}, // empty, short, invalid UTF-8
		serialproto.CmdDone:        {{0, 0}},
		serialproto.CmdStatusReply: {{0, 200, 0, 9}},
	}
	check := func(tr device.Transport, when string) {
		seq := uint8(100)
		for cmd, list := range bodies {
			for _, body := range list {
				for _, flags := range []serialproto.Flags{0, serialproto.FlagFragment} {
					seq++
					f := serialproto.Frame{Version: 1, Cmd: cmd, Flags: flags, Seq: seq, Data: body}
					if e := errorOf(t, answer(t, tr, rawFrame(t, f), seq)); e.Code != serialproto.CodeUnexpected {
						t.Errorf("%s: %v with body %x, flags %v: %s, want UNEXPECTED", when, cmd, body, flags, e.Code)
					}
				}
			}
		}
	}
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	check(tr, "without a session")
	check(rawSession(t, addr, "wrongway"), "in a session")
}

// gapDevice sends the fragments of one 5-fragment INFER (seq 7) by hand
// and reads what the daemon answers.
type gapDevice struct {
	t     *testing.T
	tr    device.Transport
	datas [][]byte
}

func newGapDevice(t *testing.T, addr, id string) *gapDevice {
	body, _ := (&serialproto.Infer{Prompt: string(bytes.Repeat([]byte("moist "), 28))}).AppendBody(nil)
	datas, err := serialproto.Fragments(body, 40)
	if err != nil || len(datas) != 5 {
		t.Fatalf("%d fragments, %v", len(datas), err)
	}
	return &gapDevice{t: t, tr: rawSession(t, addr, id), datas: datas}
}

// send sends fragments, then gives the daemon time to take them before
// the test moves its clock.
func (g *gapDevice) send(idx ...int) {
	g.t.Helper()
	for _, i := range idx {
		f := rawFrame(g.t, serialproto.Frame{Version: 1, Cmd: serialproto.CmdInfer, Flags: serialproto.FlagFragment, Seq: 7, Data: g.datas[i]})
		if err := g.tr.Send(f); err != nil {
			g.t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
}

func (g *gapDevice) silent(why string) {
	g.t.Helper()
	if f, err := g.tr.Recv(time.Now().Add(100 * time.Millisecond)); err == nil {
		g.t.Fatalf("%s: got %v", why, f)
	}
}

func (g *gapDevice) nack(want ...byte) {
	g.t.Helper()
	f, err := g.tr.Recv(time.Now().Add(2 * time.Second))
	var n serialproto.Nack
	if err != nil || f.Cmd != serialproto.CmdNack || f.Seq != 7 || n.UnmarshalBody(f.Data) != nil ||
		n.Reason != serialproto.NackMissing || !bytes.Equal(n.Missing, want) {
		g.t.Fatalf("want NACK MISSING %v with seq 7, got %v %v", want, f, err)
	}
}

// finish expects the ACK of the completed INFER and takes its answer, so
// the daemon need not wait for it at shutdown.
func (g *gapDevice) finish() {
	g.t.Helper()
	f, err := g.tr.Recv(time.Now().Add(2 * time.Second))
	if err != nil || f.Cmd != serialproto.CmdAck || f.Seq != 7 {
		g.t.Fatalf("after the repair: %v %v, want the ACK", f, err)
	}
	for {
		f, err := g.tr.Recv(time.Now().Add(2 * time.Second))
		if err != nil {
			g.t.Fatalf("the answer: %v", err)
		}
		var done serialproto.Done
		if f.Cmd == serialproto.CmdDone && done.UnmarshalBody(f.Data) == nil {
			_ = g.tr.Send(rawFrame(g.t, serialproto.Frame{Version: 1, Cmd: serialproto.CmdAck, Seq: 7, Data: []byte{0, byte(done.Chunk + 1), 4}}))
			return
		}
	}
}

// TestNackMissingAfterHalfAnRTO: fragment 0 of 5 arrives and nothing
// after it. Half an RTO later the daemon lists the missing fragments in
// NACK MISSING (§6) — it used to stay silent until the device's own timer
// probed — and, the NACK lost, repeats it an RTO later, then 2 and 4 RTOs
// later, and no more (bounded); after more fragments and another silence
// it lists what is still missing, and the completed message runs.
func TestNackMissingAfterHalfAnRTO(t *testing.T) {
	e := &testEngine{}
	_, addr, clk := startDaemonOnClock(t, Config{}, e)
	g := newGapDevice(t, addr, "gappy")
	const rto = 250 * time.Millisecond // the UDP link's
	g.send(0)
	clk.Advance(rto/2 - time.Millisecond)
	g.silent("before half an RTO")
	clk.Advance(time.Millisecond)
	g.nack(1, 2, 3, 4)
	for _, after := range []time.Duration{rto, 2 * rto, 4 * rto} { // the NACK lost: repeated
		clk.Advance(after - time.Millisecond)
		g.silent("a repeated NACK before its RTO")
		clk.Advance(time.Millisecond)
		g.nack(1, 2, 3, 4)
	}
	clk.Advance(8 * rto)
	g.silent("a fifth NACK for the same silence")

	g.send(2, 1)
	clk.Advance(rto / 2)
	g.nack(3, 4)
	g.send(3, 4)
	g.finish()
	if n := e.calls.Load(); n != 1 {
		t.Fatalf("the engine ran %d times", n)
	}
}

// TestNackMissingOncePerGap: the last fragment arrives after a gap and is
// answered with NACK MISSING at once; the device's probe (the last
// fragment again) crossing that NACK, and the half-RTO timer, do not send
// the same list again within an RTO — on a noisy UART each such NACK made
// the device send the missing fragments once more. An RTO after the NACK,
// the gap still open, it is repeated; a probe then is answered once.
func TestNackMissingOncePerGap(t *testing.T) {
	e := &testEngine{}
	_, addr, clk := startDaemonOnClock(t, Config{}, e)
	g := newGapDevice(t, addr, "probing")
	const rto = 250 * time.Millisecond
	g.send(0, 4)
	g.nack(1, 2, 3)
	g.send(4) // the probe, crossing the NACK
	g.silent("a probe within an RTO of the NACK")
	clk.Advance(rto / 2)
	g.silent("the half-RTO timer after a NACK")
	clk.Advance(rto/2 - time.Millisecond)
	g.silent("before an RTO")
	clk.Advance(time.Millisecond)
	g.nack(1, 2, 3) // the first was lost: repeated by the timer
	g.send(4)
	g.silent("a probe crossing the repeat")
	clk.Advance(rto)
	g.send(4) // a probe an RTO after the last NACK: answered
	g.nack(1, 2, 3)
	g.send(1, 2, 3)
	g.finish()
	if n := e.calls.Load(); n != 1 {
		t.Fatalf("the engine ran %d times", n)
	}
}

// dropFirstFinalAck loses the device's first ACK that acknowledges a DONE
// (its next one past the DONE's chunk): the final ACK of the first answer.
type dropFirstFinalAck struct {
	device.Transport
	mu      sync.Mutex
	lastEnd map[uint8]uint16 // per seq: the DONE's chunk + 1
	dropped bool
}

func (d *dropFirstFinalAck) Recv(deadline time.Time) (serialproto.Frame, error) {
	f, err := d.Transport.Recv(deadline)
	var done serialproto.Done
	if err == nil && f.Cmd == serialproto.CmdDone && done.UnmarshalBody(f.Data) == nil {
		d.mu.Lock()
		d.lastEnd[f.Seq] = done.Chunk + 1
		d.mu.Unlock()
	}
	return f, err
}

func (d *dropFirstFinalAck) Send(raw []byte) error {
	var ack serialproto.Ack
	if f, err := serialproto.Decode(raw); err == nil && f.Cmd == serialproto.CmdAck && ack.UnmarshalBody(f.Data) == nil {
		d.mu.Lock()
		end, ok := d.lastEnd[f.Seq]
		drop := ok && !d.dropped && ack.Next == end
		d.dropped = d.dropped || drop
		d.mu.Unlock()
		if drop {
			return nil
		}
	}
	return d.Transport.Send(raw)
}

// TestForgottenStreamTakesItsAck: the final ACK of a request is lost and
// the device asks 40 more questions before the daemon's RTO resends the
// DONE. The session remembers 32 requests; it forgot the oldest even while
// its stream was still waiting for that ACK, so the device's ACK of the
// resent DONE found nothing and the stream held one of the device's places
// until its retries ran out (seconds: the device got BUSY on a fast link,
// 1 % loss). A request still streaming is remembered until it ends.
func TestForgottenStreamTakesItsAck(t *testing.T) {
	e := &testEngine{}
	d, addr := startDaemon(t, Config{MinRTO: 400 * time.Millisecond}, e)
	drop := &dropFirstFinalAck{lastEnd: map[uint8]uint16{}}
	c, _ := dialVia(t, addr, device.Config{DeviceID: "fast", RTO: 400 * time.Millisecond}, func(tr device.Transport) device.Transport {
		drop.Transport = tr
		return drop
	})
	start := time.Now()
	for i := range 41 { // the first's final ACK lost, then 40 more
		if _, _, err := ask(t, c, fmt.Sprintf("reading %d", i)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if !drop.dropped {
		t.Fatal("no final ACK was dropped: the test proved nothing")
	}
	if time.Since(start) > 300*time.Millisecond {
		t.Skipf("41 requests took %v, not within the daemon's 400 ms RTO: the box is too loaded to show it", time.Since(start))
	}
	// The DONE comes again after the RTO; the device, asking on, ACKs it.
	busy := func() bool {
		for _, s := range d.sessions.all() {
			if s.deviceID == "fast" && s.busy() {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(3 * time.Second); busy(); {
		if time.Now().After(deadline) {
			t.Fatal("the first request's stream still holds a place 3 s on: the ACK of its resent DONE was not taken")
		}
		if _, err := c.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
