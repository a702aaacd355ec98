package device_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestAskUDP: HELLO, a prompt in several fragments (the WELCOME's max_data
// is small), the answer acknowledged chunk by chunk, PING, STATUS and BYE.
func TestAskUDP(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{DeviceID: "greenhouse-1", MaxData: 128, Window: 2, RTO: time.Second})
	h := hello(t, p, c, serialproto.Welcome{MaxData: 48, HeartbeatMS: 3000})
	if h.DeviceID != "greenhouse-1" || h.MaxData != 128 || h.Window != 2 || h.MinVersion != 1 || h.Features != serialproto.FeatureSACK|serialproto.FeatureStatusExt {
		t.Fatalf("HELLO %+v", h)
	}
	if w := c.Welcome(); w.MaxData != 48 || w.HeartbeatMS != 3000 {
		t.Fatalf("Welcome() = %+v", w)
	}

	prompt := strings.Repeat("Is the soil dry? ", 20)
	var got strings.Builder
	ch := ask(context.Background(), c, prompt, func(b []byte) error { got.Write(b); return nil })
	m, seq, frags := p.expectInfer()
	if m.Prompt != prompt || frags < 8 {
		t.Fatalf("INFER: %d fragments, prompt %q", frags, m.Prompt)
	}
	p.send(seq, &serialproto.Ack{Next: uint16(frags)})
	sent := p.stream(seq, "Water bed 3 first: the soil reads 31 %.", 7)
	done, err := await(t, ch)
	if err != nil || *done != *sent || got.String() != "Water bed 3 first: the soil reads 31 %." {
		t.Fatalf("Ask: %v, DONE %+v, text %q", err, done, got.String())
	}

	pong := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
	f, ping := p.expect(serialproto.CmdPing)
	p.send(f.Seq, &serialproto.Pong{Data: ping.(*serialproto.Ping).Data})
	if rtt, err := await(t, pong); err != nil || rtt <= 0 {
		t.Fatalf("Ping: %v, %v", rtt, err)
	}

	status := async(func() (*serialproto.StatusReply, error) { return c.Status(context.Background()) })
	f, _ = p.expect(serialproto.CmdStatus)
	p.send(f.Seq, &serialproto.StatusReply{State: serialproto.StateDegraded, LoadPct: 40, Queue: 2, Backend: "llama.cpp", Model: "tiny"})
	if st, err := await(t, status); err != nil || st.State != serialproto.StateDegraded || st.Queue != 2 || st.Model != "tiny" {
		t.Fatalf("Status: %+v, %v", st, err)
	}

	bye := async(func() (struct{}, error) { return struct{}{}, c.Bye(context.Background()) })
	f, _ = p.expect(serialproto.CmdBye)
	p.send(f.Seq, &serialproto.Bye{})
	if _, err := await(t, bye); err != nil {
		t.Fatalf("Bye: %v", err)
	}
}

// TestSACK: granted SACK (§8.2), the device keeps chunks after a gap
// within its window, lists them in its ACKs, and delivers the text in order
// once the gap is filled; a chunk beyond the window is dropped, and a
// duplicate of a held chunk changes nothing. The final chunk may be held
// too.
func TestSACK(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{Window: 4, RTO: time.Second})
	hello(t, p, c, serialproto.Welcome{Features: serialproto.FeatureSACK})
	var (
		mu  sync.Mutex // onText runs in Ask's goroutine
		got strings.Builder
	)
	text := func() string { mu.Lock(); defer mu.Unlock(); return got.String() }
	seq, ch := p.askAccepted(context.Background(), c, "hi", func(b []byte) error { mu.Lock(); got.Write(b); mu.Unlock(); return nil })
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("a")})
	p.expectSACK(seq, 1, nil)
	p.send(seq, &serialproto.Token{Chunk: 2, Text: []byte("c")}) // 1 lost
	p.expectSACK(seq, 1, []byte{0x80})
	p.send(seq, &serialproto.Token{Chunk: 5, Text: []byte("x")}) // beyond next+window: dropped
	p.expectSACK(seq, 1, []byte{0x80})
	p.send(seq, &serialproto.Done{Chunk: 4, TextBytes: 4, TextCRC32C: serialproto.CRC32C([]byte("abcd"))})
	p.expectSACK(seq, 1, []byte{0xA0})
	p.send(seq, &serialproto.Token{Chunk: 2, Text: []byte("c")}) // a duplicate of a held chunk
	p.expectSACK(seq, 1, []byte{0xA0})
	if got := text(); got != "a" {
		t.Fatalf("text %q delivered before the gap was filled", got)
	}
	p.send(seq, &serialproto.Token{Chunk: 3, Text: []byte("d")})
	p.expectSACK(seq, 1, []byte{0xE0})
	p.send(seq, &serialproto.Token{Chunk: 1, Text: []byte("b")}) // fills the gap: all of it is delivered
	p.expectSACK(seq, 5, nil)
	if _, err := await(t, ch); err != nil || text() != "abcd" {
		t.Fatalf("Ask: %v, text %q", err, text())
	}
}

// TestNoSACKDevice: a device configured as one from before SACK neither asks
// for it nor sends bitmaps, even to a daemon that offers them.
func TestNoSACKDevice(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{Window: 4, RTO: time.Second, NoSACK: true})
	if h := hello(t, p, c, serialproto.Welcome{Features: serialproto.FeatureSACK}); h.Features&serialproto.FeatureSACK != 0 {
		t.Fatalf("HELLO features %#x", h.Features)
	}
	seq, ch := p.askAccepted(context.Background(), c, "hi", func([]byte) error { return nil })
	p.send(seq, &serialproto.Token{Chunk: 1, Text: []byte("b")})
	p.expectSACK(seq, 0, nil)
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("a")})
	p.expectSACK(seq, 1, nil) // chunk 1 was not kept
	p.send(seq, &serialproto.Token{Chunk: 1, Text: []byte("b")})
	p.expectSACK(seq, 2, nil)
	p.send(seq, &serialproto.Done{Chunk: 2, TextBytes: 2, TextCRC32C: serialproto.CRC32C([]byte("ab"))})
	p.expectSACK(seq, 3, nil)
	if _, err := await(t, ch); err != nil {
		t.Fatal(err)
	}
}

// TestStatusExt: a device asks for the extended STATUS_REPLY unless it is
// configured as one from before it, and reads whichever layout the daemon
// sends: the basic one from a daemon that did not grant the feature (an
// older one), the cache figures from one that did (protocol.md §11.11).
func TestStatusExt(t *testing.T) {
	kv := &serialproto.CacheFigures{Hits: 3, Misses: 1, Bytes: 4096}
	tests := []struct {
		name  string
		cfg   device.Config
		grant uint16
		reply serialproto.StatusReply
	}{
		{"old daemon", device.Config{}, 0, serialproto.StatusReply{Backend: "llama.cpp", Model: "tiny"}},
		{"new daemon", device.Config{}, serialproto.FeatureStatusExt,
			serialproto.StatusReply{Backend: "llama.cpp", Model: "tiny", Extended: true, KV: kv}},
		{"old device", device.Config{NoStatusExt: true}, 0, serialproto.StatusReply{Backend: "llama.cpp", Model: "tiny"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.RTO = time.Second
			p, c := newUDPPeer(t, tc.cfg)
			h := hello(t, p, c, serialproto.Welcome{Features: tc.grant})
			if asked := h.Features&serialproto.FeatureStatusExt != 0; asked == tc.cfg.NoStatusExt {
				t.Fatalf("HELLO features %#x", h.Features)
			}
			status := async(func() (*serialproto.StatusReply, error) { return c.Status(context.Background()) })
			f, _ := p.expect(serialproto.CmdStatus)
			p.send(f.Seq, &tc.reply)
			st, err := await(t, status)
			if err != nil || st.Extended != tc.reply.Extended || st.Model != "tiny" || (st.KV == nil) != (tc.reply.KV == nil) ||
				(st.KV != nil && *st.KV != *kv) || st.Responses != nil {
				t.Fatalf("Status: %+v, %v", st, err)
			}
		})
	}
}

// TestGoBackN: a chunk out of order is not taken but acknowledged with the
// chunk expected, a duplicate is taken once, and the text arrives in order.
func TestGoBackN(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	hello(t, p, c, serialproto.Welcome{})
	var got strings.Builder
	seq, ch := p.askAccepted(context.Background(), c, "hi", func(b []byte) error { got.Write(b); return nil })
	p.send(seq, &serialproto.Token{Chunk: 1, Text: []byte("world")}) // chunk 0 lost
	p.expectAck(seq, 0)
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("hello ")})
	p.expectAck(seq, 1)
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("hello ")}) // a duplicate
	p.expectAck(seq, 1)
	p.send(seq, &serialproto.Token{Chunk: 1, Text: []byte("world")})
	p.expectAck(seq, 2)
	p.send(seq, &serialproto.Done{Chunk: 2, TextBytes: 11, TextCRC32C: serialproto.CRC32C([]byte("hello world"))})
	p.expectAck(seq, 3)
	if _, err := await(t, ch); err != nil || got.String() != "hello world" {
		t.Fatalf("Ask: %v, text %q", err, got.String())
	}
}

// TestChecksumMismatch: a DONE whose size or CRC-32C disagrees with the
// text received is ErrChecksum, with the DONE.
func TestChecksumMismatch(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	hello(t, p, c, serialproto.Welcome{})
	seq, ch := p.askAccepted(context.Background(), c, "hi", nil)
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("hello")})
	p.send(seq, &serialproto.Done{Chunk: 1, TextBytes: 5, TextCRC32C: serialproto.CRC32C([]byte("hellO"))})
	done, err := await(t, ch)
	if !errors.Is(err, device.ErrChecksum) || done == nil || done.TextBytes != 5 {
		t.Fatalf("want ErrChecksum with the DONE, got %v, %+v", err, done)
	}
}

// TestErrorReply: the daemon's ERROR is the call's error, usable with
// errors.As, for HELLO, INFER, a stream's final chunk and STATUS.
func TestErrorReply(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	ch := async(func() (struct{}, error) { return struct{}{}, c.Hello(context.Background()) })
	f, _ := p.expect(serialproto.CmdHello)
	p.send(f.Seq, serialproto.NewError(serialproto.CodeAuthRequired, "this device must sign"))
	var perr *serialproto.Error
	if _, err := await(t, ch); !errors.As(err, &perr) || perr.Code != serialproto.CodeAuthRequired || perr.Text != "this device must sign" {
		t.Fatalf("Hello: want AUTH_REQUIRED, got %v", err)
	}

	hello(t, p, c, serialproto.Welcome{})
	ch2 := ask(context.Background(), c, "hi", nil)
	_, seq, _ := p.expectInfer()
	p.send(seq, serialproto.NewError(serialproto.CodeModelNotFound, "no such model"))
	if _, err := await(t, ch2); !errors.As(err, &perr) || perr.Code != serialproto.CodeModelNotFound {
		t.Fatalf("Ask: want MODEL_NOT_FOUND, got %v", err)
	}

	// An engine failing mid-answer: the ERROR is the stream's final chunk,
	// and the device acknowledges it so the daemon can let go.
	seq, ch2 = p.askAccepted(context.Background(), c, "hi", nil)
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("half an ans")})
	p.expectAck(seq, 1)
	// A non-final ERROR for the same seq (a mangled ACK of ours, §11.7)
	// does not end an accepted request.
	p.send(seq, serialproto.NewError(serialproto.CodeUnknownCommand, "cmd 0x7a"))
	fail := serialproto.NewError(serialproto.CodeBackendFailed, "engine died")
	fail.Flags |= serialproto.ErrorFlagStream
	fail.Chunk = 1
	p.send(seq, fail)
	p.expectAck(seq, 2)
	if _, err := await(t, ch2); !errors.As(err, &perr) || perr.Code != serialproto.CodeBackendFailed || !perr.Stream() {
		t.Fatalf("Ask: want the stream's BACKEND_FAILED, got %v", err)
	}

	st := async(func() (*serialproto.StatusReply, error) { return c.Status(context.Background()) })
	f, _ = p.expect(serialproto.CmdStatus)
	p.send(f.Seq, serialproto.NewError(serialproto.CodeShuttingDown, ""))
	if _, err := await(t, st); !errors.As(err, &perr) || perr.Code != serialproto.CodeShuttingDown {
		t.Fatalf("Status: want SHUTTING_DOWN, got %v", err)
	}
}

// TestAskBeforeHello is ErrNoSession, and nothing is sent.
func TestAskBeforeHello(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{})
	if _, err := c.Ask(context.Background(), &serialproto.Infer{Prompt: "hi"}, nil); !errors.Is(err, device.ErrNoSession) {
		t.Fatalf("Ask: want ErrNoSession, got %v", err)
	}
	if _, _, err := c.AskRetrying(context.Background(), &serialproto.Infer{Prompt: "hi"}, nil, 3); !errors.Is(err, device.ErrNoSession) {
		t.Fatalf("AskRetrying: want ErrNoSession, got %v", err)
	}
	if f, err := p.link.Recv(time.Now().Add(50 * time.Millisecond)); !isTimeout(err) {
		t.Fatalf("the device sent %v (%v)", f.Cmd, err)
	}
}

// TestDeadPeer: a daemon that never answers ends HELLO in ErrTimeout after
// the retransmission budget, each copy the same HELLO; a daemon that falls
// silent mid-answer ends the answer after three heartbeats.
func TestDeadPeer(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: 10 * time.Millisecond, Retries: 3})
	start := time.Now()
	ch := async(func() (struct{}, error) { return struct{}{}, c.Hello(context.Background()) })
	var first *serialproto.Hello
	for i := range 4 { // the HELLO and 3 retransmissions
		_, m := p.expect(serialproto.CmdHello)
		if h := m.(*serialproto.Hello); first == nil {
			first = h
		} else if *h != *first {
			t.Fatalf("retransmission %d differs: %+v, first %+v", i, h, first)
		}
	}
	_, err := await(t, ch)
	if !errors.Is(err, device.ErrTimeout) || !strings.Contains(err.Error(), "3 retransmissions") {
		t.Fatalf("want ErrTimeout after 3 retransmissions, got %v", err)
	}
	if el := time.Since(start); el < 10*(1+2+4)*time.Millisecond {
		t.Fatalf("gave up after %v: no back-off", el)
	}
	if f, err := p.link.Recv(time.Now().Add(100 * time.Millisecond)); !isTimeout(err) {
		t.Fatalf("a 5th HELLO: %v (%v)", f.Cmd, err)
	}

	// Mid-answer: heartbeat 40 ms, so the device keeps the stream alive
	// with an ACK every RTO (100 ms) and gives up after 6 × 100 ms of
	// silence.
	p, c = newUDPPeer(t, device.Config{RTO: 100 * time.Millisecond})
	hello(t, p, c, serialproto.Welcome{HeartbeatMS: 40})
	seq, asked := p.askAccepted(context.Background(), c, "hi", nil)
	start = time.Now()
	p.expectAck(seq, 0) // a keepalive
	if _, err := await(t, asked); !errors.Is(err, device.ErrTimeout) || !strings.Contains(err.Error(), "silent") {
		t.Fatalf("want ErrTimeout for a silent stream, got %v", err)
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Fatalf("a silent stream abandoned after %v", el)
	}
}

// TestContextEnds: the context's error, promptly; mid-answer the device
// sends CANCEL and acknowledges the stream's final chunk.
func TestContextEnds(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Hello(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Hello: want DeadlineExceeded, got %v", err)
	}

	p, c = newUDPPeer(t, device.Config{RTO: time.Second}) // without the HELLOs above
	hello(t, p, c, serialproto.Welcome{})
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	seq, ch := p.askAccepted(ctx, c, "hi", func([]byte) error { cancel(); return nil })
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("one")})
	f, _ := p.expect(serialproto.CmdCancel)
	if f.Seq != seq {
		t.Fatalf("CANCEL of request %d, want %d", f.Seq, seq)
	}
	end := serialproto.NewError(serialproto.CodeCancelled, "")
	end.Flags |= serialproto.ErrorFlagStream
	end.Chunk = 1
	p.send(seq, end)
	p.expectAck(seq, 2)
	if _, err := await(t, ch); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ask: want Canceled, got %v", err)
	}
}

// TestReackFinishedStream: a final chunk the daemon sends again after the
// answer ended (the device's ACK was lost) is acknowledged again.
func TestReackFinishedStream(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	hello(t, p, c, serialproto.Welcome{})
	seq, ch := p.askAccepted(context.Background(), c, "hi", nil)
	done := p.stream(seq, "ok", 8)
	if _, err := await(t, ch); err != nil {
		t.Fatal(err)
	}
	pong := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
	f, _ := p.expect(serialproto.CmdPing)
	p.send(seq, done) // the old DONE again
	p.expectAck(seq, done.Chunk+1)
	p.send(f.Seq, &serialproto.Pong{})
	if _, err := await(t, pong); err != nil {
		t.Fatal(err)
	}
}

// TestReackOldFinalChunk: the final chunk of a stream older than the 32
// finished ones the device remembers is acknowledged too (its index + 1):
// on a fast link a device finishes 32 requests within one of the daemon's
// RTOs, and an unacknowledged stream would hold a place for seconds. A
// TOKEN of such a stream, whose end the device does not know, is not.
func TestReackOldFinalChunk(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	hello(t, p, c, serialproto.Welcome{})
	seq, ch := p.askAccepted(context.Background(), c, "hi", nil)
	done := p.stream(seq, "ok", 8)
	if _, err := await(t, ch); err != nil {
		t.Fatal(err)
	}
	for range 40 { // 40 more answers: the first is out of the device's memory
		s, ch := p.askAccepted(context.Background(), c, "more", nil)
		p.stream(s, "ok", 8)
		if _, err := await(t, ch); err != nil {
			t.Fatal(err)
		}
	}
	pong := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
	f, _ := p.expect(serialproto.CmdPing)
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("ok")}) // a TOKEN: not acknowledged
	p.send(seq, done)                                             // the old DONE again
	p.expectAck(seq, done.Chunk+1)
	p.send(f.Seq, &serialproto.Pong{})
	if _, err := await(t, pong); err != nil {
		t.Fatal(err)
	}
}

// TestNackResends: NACK BAD_FRAME repeats the frame at once rather than
// after the RTO; NACK MISSING resends just the fragments named.
func TestNackResends(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: 10 * time.Second})
	start := time.Now()
	ch := async(func() (struct{}, error) { return struct{}{}, c.Hello(context.Background()) })
	p.expect(serialproto.CmdHello)
	p.send(0, &serialproto.Nack{Reason: serialproto.NackBadFrame})
	p.welcome(serialproto.Welcome{MaxData: 32}) // the repeated HELLO
	if _, err := await(t, ch); err != nil || time.Since(start) > wait {
		t.Fatalf("Hello: %v after %v", err, time.Since(start))
	}

	prompt := strings.Repeat("abcdefgh", 12)
	asked := ask(context.Background(), c, prompt, nil)
	var frags []serialproto.Frame
	for {
		f, _ := p.expect(serialproto.CmdInfer)
		frags = append(frags, serialproto.Frame{Seq: f.Seq, Flags: f.Flags, Data: append([]byte(nil), f.Data...)})
		if int(f.Data[0]) == int(f.Data[1])-1 {
			break
		}
	}
	if len(frags) < 4 {
		t.Fatalf("%d fragments", len(frags))
	}
	seq := frags[0].Seq
	for i, f := range frags {
		if i == 2 {
			continue // lost
		}
		if _, _, err := p.reasm.Add(time.Now(), serialproto.CmdInfer, seq, f.Data); err != nil {
			t.Fatal(err)
		}
	}
	p.send(seq, &serialproto.Nack{Reason: serialproto.NackMissing, Missing: []byte{2}})
	f, _ := p.expect(serialproto.CmdInfer)
	if f.Data[0] != 2 {
		t.Fatalf("resent fragment %d, want 2", f.Data[0])
	}
	body, _, err := p.reasm.Add(time.Now(), serialproto.CmdInfer, seq, f.Data)
	if err != nil || body == nil {
		t.Fatalf("reassembly after the resend: %v", err)
	}
	p.send(seq, &serialproto.Ack{Next: uint16(len(frags))})
	p.stream(seq, "fine", 4)
	if _, err := await(t, asked); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptFramesUDP: datagrams that are not one sound frame, frames for
// another request and a WELCOME for another seq are skipped; a sound frame
// with a bad body ends the exchange with the body's error.
func TestCorruptFramesUDP(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	ch := async(func() (struct{}, error) { return struct{}{}, c.Hello(context.Background()) })
	f, _ := p.expect(serialproto.CmdHello)
	good, _ := (&serialproto.Welcome{Version: 1, MaxData: 256, Window: 4, HeartbeatMS: 5000, MaxMessage: 4096}).AppendBody(nil)
	raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdWelcome, Seq: f.Seq, Data: good})
	p.sendRaw([]byte("not a frame at all"))
	bad := append([]byte(nil), raw...)
	bad[len(bad)-1] ^= 0x40 // the CRC-8
	p.sendRaw(bad)
	p.sendRaw(raw[:len(raw)-3]) // cut short
	p.send(f.Seq+1, &serialproto.Welcome{Version: 1, MaxData: 32, Window: 1})
	p.sendRaw(raw)
	if _, err := await(t, ch); err != nil || c.Welcome().MaxData != 256 {
		t.Fatalf("Hello: %v, WELCOME %+v", err, c.Welcome())
	}

	st := async(func() (*serialproto.StatusReply, error) { return c.Status(context.Background()) })
	f, _ = p.expect(serialproto.CmdStatus)
	raw, _ = serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdStatusReply, Seq: f.Seq, Data: []byte{0}})
	p.sendRaw(raw) // sound frame, body too short
	if _, err := await(t, st); !errors.Is(err, serialproto.ErrMalformed) {
		t.Fatalf("Status: want ErrMalformed, got %v", err)
	}
}

// TestBusyRetrySameSeq: AskRetrying repeats a refused INFER under the same
// seq (spec §12), so a delayed copy and the retry are one request.
func TestBusyRetrySameSeq(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second})
	hello(t, p, c, serialproto.Welcome{})
	type retried struct {
		done    *serialproto.Done
		retries int
	}
	ch := async(func() (retried, error) {
		d, n, err := c.AskRetrying(context.Background(), &serialproto.Infer{Prompt: "water?"}, func([]byte) error { return nil }, 3)
		return retried{d, n}, err
	})
	_, seq, _ := p.expectInfer()
	p.send(seq, serialproto.NewError(serialproto.CodeBusy, "queue full"))
	start := time.Now()
	m, seq2, n := p.expectInfer()
	if seq2 != seq || m.Prompt != "water?" {
		t.Fatalf("retry under seq %d (%q), want seq %d", seq2, m.Prompt, seq)
	}
	if el := time.Since(start); el < 90*time.Millisecond {
		t.Fatalf("retried after %v: no back-off", el)
	}
	p.send(seq, &serialproto.Ack{Next: uint16(n)})
	p.stream(seq, "yes", 3)
	r, err := await(t, ch)
	if err != nil || r.retries != 1 || r.done == nil {
		t.Fatalf("AskRetrying: %v after %d retries", err, r.retries)
	}

	// The budget spent, the refusal is the error; a refusal that is not
	// BUSY or RATE_LIMITED is not retried.
	ch = async(func() (retried, error) {
		d, n, err := c.AskRetrying(context.Background(), &serialproto.Infer{Prompt: "again"}, func([]byte) error { return nil }, 1)
		return retried{d, n}, err
	})
	for range 2 {
		_, seq, _ = p.expectInfer()
		p.send(seq, serialproto.NewError(serialproto.CodeRateLimited, ""))
	}
	var perr *serialproto.Error
	if r, err := await(t, ch); !errors.As(err, &perr) || perr.Code != serialproto.CodeRateLimited || r.retries != 1 {
		t.Fatalf("want RATE_LIMITED after 1 retry, got %v after %d", err, r.retries)
	}
	ch = async(func() (retried, error) {
		d, n, err := c.AskRetrying(context.Background(), &serialproto.Infer{Prompt: "again"}, func([]byte) error { return nil }, 5)
		return retried{d, n}, err
	})
	_, seq, _ = p.expectInfer()
	p.send(seq, serialproto.NewError(serialproto.CodeTooLarge, ""))
	if r, err := await(t, ch); !errors.As(err, &perr) || perr.Code != serialproto.CodeTooLarge || r.retries != 0 {
		t.Fatalf("want TOO_LARGE without retries, got %v after %d", err, r.retries)
	}
}

// TestSignedSession: HELLO signed with boot_nonce ‖ 0, a signed WELCOME
// checked, every later frame signed; the daemon's frames that fail
// verification are ignored, and a WELCOME that does not verify is no
// session.
func TestSignedSession(t *testing.T) {
	key, err := serialproto.NewKey([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	p, c := newUDPPeer(t, device.Config{DeviceID: "locked", Key: key, LinkID: 1, RTO: time.Second})
	if h := hello(t, p, c, serialproto.Welcome{}); h.Features&serialproto.FeatureSign == 0 {
		t.Fatalf("HELLO without SIGN: %+v", h)
	}
	var got strings.Builder
	ch := ask(context.Background(), c, "signed", func(b []byte) error { got.Write(b); return nil })
	m, seq, n := p.expectInfer() // recv verifies every frame
	if m.Prompt != "signed" {
		t.Fatalf("prompt %q", m.Prompt)
	}
	p.send(seq, &serialproto.Ack{Next: uint16(n)})
	// A forged TOKEN (another key) and an unsigned one are dropped.
	other, _ := serialproto.NewKey([]byte("fedcba9876543210fedcba9876543210"))
	forger, _ := serialproto.NewSigner(other, serialproto.DaemonToDevice, p.signer.Nonce, 0, 100)
	body, _ := (&serialproto.Token{Chunk: 0, Text: []byte("forged")}).AppendBody(nil)
	raw, _ := forger.AppendSigned(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdToken, Seq: seq, Data: body})
	p.sendRaw(raw)
	raw, _ = serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdToken, Seq: seq, Data: body})
	p.sendRaw(raw)
	p.stream(seq, "genuine", 4)
	if _, err := await(t, ch); err != nil || got.String() != "genuine" {
		t.Fatalf("Ask: %v, text %q", err, got.String())
	}

	// A WELCOME under the wrong key: not our daemon, so no session.
	p2, c2 := newUDPPeer(t, device.Config{DeviceID: "locked", Key: key, RTO: 10 * time.Millisecond, Retries: 2})
	ch2 := async(func() (struct{}, error) { return struct{}{}, c2.Hello(context.Background()) })
	f, err := p2.link.Recv(time.Now().Add(wait))
	if err != nil {
		t.Fatal(err)
	}
	f.Data = f.Data[:len(f.Data)-serialproto.SignatureLen]
	hm, _ := serialproto.ParseBody(serialproto.CmdHello, f.Data)
	nonce := serialproto.MakeNonce(hm.(*serialproto.Hello).BootNonce, 7)
	p2.signer, _ = serialproto.NewSigner(other, serialproto.DaemonToDevice, nonce, 0, 0)
	p2.send(f.Seq, &serialproto.Welcome{Version: 1, MaxData: 256, Features: serialproto.FeatureSign, Window: 4, HeartbeatMS: 5000, MaxMessage: 4096, DaemonNonce: 7})
	if _, err := await(t, ch2); !errors.Is(err, device.ErrTimeout) {
		t.Fatalf("Hello with a forged WELCOME: want ErrTimeout, got %v", err)
	}
}

// TestRTOAdapts: the device's timer follows the measured round trip (RFC
// 6298, §7.2): after a few prompt answers the retransmission of an
// unanswered PING comes far sooner than the 1 s initial RTO, and an answer
// to a retransmitted request does not feed the estimate (Karn's rule).
func TestRTOAdapts(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{RTO: time.Second, MinRTO: 20 * time.Millisecond})
	hello(t, p, c, serialproto.Welcome{})
	pingOnce := func(answer bool) (first, second time.Time) {
		ch := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
		f, m := p.expect(serialproto.CmdPing)
		first = time.Now()
		if !answer {
			f, m = p.expect(serialproto.CmdPing) // the retransmission
			second = time.Now()
		}
		p.send(f.Seq, &serialproto.Pong{Data: m.(*serialproto.Ping).Data})
		if _, err := await(t, ch); err != nil {
			t.Fatal(err)
		}
		return first, second
	}
	for range 5 {
		pingOnce(true)
	}
	rto, srtt := c.RTO()
	if srtt <= 0 || rto >= 200*time.Millisecond {
		t.Fatalf("after 5 loopback round trips: RTO %v, SRTT %v", rto, srtt)
	}
	first, second := pingOnce(false)
	if gap := second.Sub(first); gap > 500*time.Millisecond {
		t.Fatalf("retransmitted after %v with an RTO of %v", gap, rto)
	}
	if after, _ := c.RTO(); after != rto {
		t.Fatalf("the answer to a retransmitted PING moved the RTO from %v to %v", rto, after)
	}
}

// TestStallOutlivesLowRTO: a device whose estimate learned a 1 ms RTO on a
// fast link retransmits soon into a stall, but does not give up before the
// time a 100 ms timer's retries would take (serialproto.RetryHorizon): an
// answer 300 ms late, after more than Retries retransmissions, still ends
// the request. Fails when the retransmission count alone decides.
func TestStallOutlivesLowRTO(t *testing.T) {
	const retries = 2
	p, c := newUDPPeer(t, device.Config{RTO: 200 * time.Millisecond, MinRTO: time.Millisecond, Retries: retries})
	hello(t, p, c, serialproto.Welcome{})
	for range 5 {
		ch := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
		f, m := p.expect(serialproto.CmdPing)
		p.send(f.Seq, &serialproto.Pong{Data: m.(*serialproto.Ping).Data})
		if _, err := await(t, ch); err != nil {
			t.Fatal(err)
		}
	}
	if rto, _ := c.RTO(); rto >= 50*time.Millisecond {
		t.Fatalf("RTO %v after 5 loopback round trips", rto)
	}
	ch := async(func() (time.Duration, error) { return c.Ping(context.Background()) })
	f, m := p.expect(serialproto.CmdPing)
	start := time.Now()
	copies := 0
	for time.Since(start) < 300*time.Millisecond { // the stall: the device's copies go unanswered
		if _, err := p.link.Recv(start.Add(300 * time.Millisecond)); err == nil {
			copies++
		}
	}
	if copies <= retries {
		t.Fatalf("%d retransmissions in a 300 ms stall with a low RTO", copies)
	}
	p.send(f.Seq, &serialproto.Pong{Data: m.(*serialproto.Ping).Data})
	if _, err := await(t, ch); err != nil {
		t.Fatalf("an answer 300 ms late, within the 100 ms timer's give-up time: %v", err)
	}
}

// TestAskReopensLostSession: NO_SESSION to an INFER of which the device has
// seen nothing is answered by a new HELLO and the same prompt under a new
// seq, once, and the application sees one answer (protocol.md §10). Not
// when the lost session held the conversation the prompt continues, nor
// once text has come: then Ask returns NO_SESSION.
func TestAskReopensLostSession(t *testing.T) {
	p, c := newUDPPeer(t, device.Config{DeviceID: "reopen", RTO: time.Second})
	first := hello(t, p, c, serialproto.Welcome{})
	noSession := serialproto.NewError(serialproto.CodeNoSession, "send HELLO first")

	// The daemon lost the session (expired, restarted) before the INFER.
	var got strings.Builder
	asked := ask(context.Background(), c, "dry?", func(b []byte) error { got.Write(b); return nil })
	_, seq, _ := p.expectInfer()
	p.send(seq, noSession)
	_, again := p.welcome(serialproto.Welcome{})
	if again.BootNonce == first.BootNonce {
		t.Fatal("the new HELLO repeats the lost session's boot nonce")
	}
	m, seq2, n := p.expectInfer()
	if m.Prompt != "dry?" || seq2 == seq {
		t.Fatalf("resent INFER %q under seq %d (lost: %d)", m.Prompt, seq2, seq)
	}
	p.send(seq2, &serialproto.Ack{Next: uint16(n)})
	p.stream(seq2, "bed 3", 8)
	if _, err := await(t, asked); err != nil || got.String() != "bed 3" {
		t.Fatalf("Ask after reopening: %v, %q", err, got.String())
	}

	// Now the session holds a turn: a continuation must not run without it.
	asked = ask(context.Background(), c, "and bed 4?", nil)
	_, seq, _ = p.expectInfer()
	p.send(seq, noSession)
	if _, err := await(t, asked); !isNoSession(err) {
		t.Fatalf("a continued chat in a lost session: %v, want NO_SESSION", err)
	}
	if f, err := p.link.Recv(time.Now().Add(300 * time.Millisecond)); !isTimeout(err) {
		t.Fatalf("the device sent %v after giving up the chat", f.Cmd)
	}

	// A new chat, accepted and partly answered when the session is lost:
	// rerunning it would show the application its first words twice.
	hello(t, p, c, serialproto.Welcome{})
	got.Reset()
	asked = async(func() (*serialproto.Done, error) {
		return c.Ask(context.Background(), &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptNewChat), Prompt: "dry?"},
			func(b []byte) error { got.Write(b); return nil })
	})
	_, seq, n = p.expectInfer()
	p.send(seq, &serialproto.Ack{Next: uint16(n)})
	p.send(seq, &serialproto.Token{Chunk: 0, Text: []byte("bed")})
	p.expectAck(seq, 1)
	p.send(seq, noSession)
	if _, err := await(t, asked); !isNoSession(err) || got.String() != "bed" {
		t.Fatalf("a lost session mid-answer: %v, text %q; want NO_SESSION after \"bed\"", err, got.String())
	}
	if f, err := p.link.Recv(time.Now().Add(300 * time.Millisecond)); !isTimeout(err) {
		t.Fatalf("the device sent %v after a lost answer", f.Cmd)
	}
}

func isNoSession(err error) bool {
	var e *serialproto.Error
	return errors.As(err, &e) && e.Code == serialproto.CodeNoSession
}
