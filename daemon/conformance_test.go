package daemon

import (
	"bytes"
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

// TestNackMissingAfterHalfAnRTO: fragment 0 of 5 arrives and nothing
// after it. Half an RTO later the daemon lists the missing fragments in
// NACK MISSING (§6) — it used to stay silent until the device's own timer
// probed — once per silence; after more fragments and another silence it
// lists what is still missing, and the completed message runs.
func TestNackMissingAfterHalfAnRTO(t *testing.T) {
	e := &testEngine{}
	_, addr, clk := startDaemonOnClock(t, Config{}, e)
	tr := rawSession(t, addr, "gappy")
	const rto = 250 * time.Millisecond // the UDP link's
	body, _ := (&serialproto.Infer{Prompt: string(bytes.Repeat([]byte("moist "), 28))}).AppendBody(nil)
	datas, err := serialproto.Fragments(body, 40)
	if err != nil || len(datas) != 5 {
		t.Fatalf("%d fragments, %v", len(datas), err)
	}
	frag := func(i int) []byte {
		return rawFrame(t, serialproto.Frame{Version: 1, Cmd: serialproto.CmdInfer, Flags: serialproto.FlagFragment, Seq: 7, Data: datas[i]})
	}
	silent := func(why string) {
		t.Helper()
		if f, err := tr.Recv(time.Now().Add(100 * time.Millisecond)); err == nil {
			t.Fatalf("%s: got %v", why, f)
		}
	}
	nack := func(want ...byte) {
		t.Helper()
		f, err := tr.Recv(time.Now().Add(2 * time.Second))
		var n serialproto.Nack
		if err != nil || f.Cmd != serialproto.CmdNack || f.Seq != 7 || n.UnmarshalBody(f.Data) != nil ||
			n.Reason != serialproto.NackMissing || !bytes.Equal(n.Missing, want) {
			t.Fatalf("want NACK MISSING %v with seq 7, got %v %v", want, f, err)
		}
	}
	if err := tr.Send(frag(0)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the daemon takes it before time moves
	clk.Advance(rto/2 - time.Millisecond)
	silent("before half an RTO")
	clk.Advance(time.Millisecond)
	nack(1, 2, 3, 4)
	clk.Advance(rto)
	silent("a second NACK for the same silence")

	for _, i := range []int{2, 1} {
		if err := tr.Send(frag(i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	clk.Advance(rto / 2)
	nack(3, 4)
	for _, i := range []int{3, 4} {
		if err := tr.Send(frag(i)); err != nil {
			t.Fatal(err)
		}
	}
	f, err := tr.Recv(time.Now().Add(2 * time.Second))
	if err != nil || f.Cmd != serialproto.CmdAck || f.Seq != 7 {
		t.Fatalf("after the repair: %v %v, want the ACK", f, err)
	}
	for { // take the answer, so the daemon need not wait for it at shutdown
		f, err := tr.Recv(time.Now().Add(2 * time.Second))
		if err != nil {
			t.Fatalf("the answer: %v", err)
		}
		var done serialproto.Done
		if f.Cmd == serialproto.CmdDone && done.UnmarshalBody(f.Data) == nil {
			_ = tr.Send(rawFrame(t, serialproto.Frame{Version: 1, Cmd: serialproto.CmdAck, Seq: 7, Data: []byte{0, byte(done.Chunk + 1), 4}}))
			break
		}
	}
	if n := e.calls.Load(); n != 1 {
		t.Fatalf("the engine ran %d times", n)
	}
}
