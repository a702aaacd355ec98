package daemon

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestSeqWrapRunsTheNewRequest: after 256 requests (PINGs as heartbeats
// count) a device's seq comes round again; an INFER on a seq an old INFER
// used is a new request and must run, not be answered as a retransmission.
func TestSeqWrapRunsTheNewRequest(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{}, e)
	c := dial(t, addr, device.Config{DeviceID: "heartbeat"})
	if _, _, err := ask(t, c, "first"); err != nil {
		t.Fatal(err)
	}
	for range 255 {
		if _, err := c.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	text, _, err := ask(t, c, "second") // the seq "first" had
	if err != nil || text != answerFor("second") {
		t.Fatalf("after the wrap: %q %v", text, err)
	}
	if e.calls.Load() != 2 {
		t.Fatalf("engine ran %d times, want 2", e.calls.Load())
	}
}

// TestRefusedInferIsAnsweredAgain: a retransmitted INFER whose ERROR was
// lost gets an answer again, never silence.
func TestRefusedInferIsAnsweredAgain(t *testing.T) {
	e := &testEngine{release: make(chan struct{})}
	_, addr := startDaemon(t, Config{MaxConcurrent: 1, MaxQueue: -1}, e)
	hog := dial(t, addr, device.Config{DeviceID: "hog"})
	hogDone := make(chan struct{})
	go func() { _, _, _ = ask(t, hog, "hold"); close(hogDone) }()
	defer func() { close(e.release); <-hogDone }()
	waitFor(t, func() bool { return e.calls.Load() == 1 })

	tr := rawSession(t, addr, "refused")
	frame := rawInfer(t, 42, "me")
	for i := range 2 {
		_ = tr.Send(frame)
		f, err := tr.Recv(time.Now().Add(2 * time.Second))
		var e serialproto.Error
		if err != nil || f.Cmd != serialproto.CmdError || e.UnmarshalBody(f.Data) != nil || e.Code != serialproto.CodeBusy {
			t.Fatalf("copy %d: %v %v", i, f, err)
		}
	}
}

// TestShutdownReleasesTheDaemon: when Run returns, every session is closed
// and the session table's lock is free (the janitor used to close sessions
// while holding it).
func TestShutdownReleasesTheDaemon(t *testing.T) {
	d, err := New(Config{}, &testEngine{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, stop := runDaemon(t, d)
	dial(t, addr, device.Config{DeviceID: "open"})
	stop() // Run returns once the janitor has closed the sessions left
	if n := d.Stats().Sessions.Load(); n != 0 {
		t.Fatalf("%d sessions open after Run returned", n)
	}
	free := make(chan struct{})
	go func() { d.sessions.mu.Lock(); d.sessions.mu.Unlock(); close(free) }()
	select {
	case <-free:
	case <-time.After(2 * time.Second):
		t.Fatal("the daemon's lock is still held after shutdown")
	}
}

// TestStopAccepting: once StopAccepting returns, a HELLO and an open
// session's new request are refused with SHUTTING_DOWN although Run still
// runs (a service announces its stop only after it, and mcpd's SIGTERM test
// saw a HELLO taken in the moment before Run's own drain).
func TestStopAccepting(t *testing.T) {
	d, addr := startDaemon(t, Config{}, &testEngine{})
	open := dial(t, addr, device.Config{DeviceID: "open"})
	d.StopAccepting()
	if _, err := hello(addr, device.Config{DeviceID: "late"}); errCode(err) != serialproto.CodeShuttingDown {
		t.Fatalf("HELLO after StopAccepting: %v, want SHUTTING_DOWN", err)
	}
	if _, _, err := ask(t, open, "still there?"); errCode(err) != serialproto.CodeShuttingDown {
		t.Fatalf("a new request after StopAccepting: %v, want SHUTTING_DOWN", err)
	}
}

// TestCancelWithClosedWindow: a device with a one-frame window cancels
// while TOKENs are still coming; the stream must end promptly.
func TestCancelWithClosedWindow(t *testing.T) {
	e := &testEngine{}
	d, addr := startDaemon(t, Config{DefaultMaxTokens: 1000}, e)
	c := dial(t, addr, device.Config{DeviceID: "tiny-window", MaxData: 32, Window: 1})
	ctx, cancel := context.WithCancel(context.Background())
	_, err := c.Ask(ctx, &serialproto.Infer{Prompt: strings.Repeat("long answer ", 200)}, func([]byte) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	waitFor(t, func() bool { return d.admission.delivering.Load() == 0 })
}

type recordPeer struct {
	mu   sync.Mutex
	sent [][]byte
}

func (p *recordPeer) Key() string           { return "rec" }
func (p *recordPeer) LinkName() string      { return "rec" }
func (p *recordPeer) Addr() netip.AddrPort  { return netip.AddrPort{} }
func (p *recordPeer) ByteStream() bool      { return false }
func (p *recordPeer) BoundDevice() string   { return "" }
func (p *recordPeer) RTO(int) time.Duration { return 10 * time.Millisecond }
func (p *recordPeer) Send(f []byte) error {
	p.mu.Lock()
	p.sent = append(p.sent, append([]byte(nil), f...))
	p.mu.Unlock()
	return nil
}

func (p *recordPeer) chunks() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int
	for _, raw := range p.sent {
		f, _ := serialproto.Decode(raw)
		out = append(out, int(f.Data[0])<<8|int(f.Data[1]))
	}
	return out
}

// TestWindowZeroProbeStaysInTheWindow: with the window closed the daemon
// probes with the last acknowledged chunk and sends nothing new.
func TestWindowZeroProbeStaysInTheWindow(t *testing.T) {
	p := &recordPeer{}
	clk := newFakeClock()
	st := newStream(p, nil, clk, peerRTT(p, 2), false, 1, 7, 32, 2, time.Millisecond, 3)
	for range 10 {
		_ = st.write([]byte("0123456789abcdefghijklmnopqrstuvwxyz"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) >= 2 })
	st.ack(2, 0, nil) // two chunks in, and the device is full
	// Each timeout (10 ms, doubling) sends a probe; probes count as
	// retransmissions: given up after 3.
	if err := advanceUntilDone(t, clk, 100*time.Millisecond, errc); !errors.Is(err, errGaveUp) {
		t.Fatalf("want errGaveUp, got %v", err)
	}
	for _, c := range p.chunks()[2:] {
		if c != 1 {
			t.Fatalf("sent chunk %d with the window closed (chunks %v)", c, p.chunks())
		}
	}
}

// TestFinalErrorFitsTheDevice: the ERROR that ends a stream is cut to the
// device's data limit like every other frame it gets.
func TestFinalErrorFitsTheDevice(t *testing.T) {
	p := &recordPeer{}
	st := newStream(p, nil, newFakeClock(), peerRTT(p, 2), false, 1, 7, 32, 2, time.Millisecond, 3)
	st.finish(func(chunk uint16, _, _ uint32) serialproto.Message {
		e := serialproto.NewError(serialproto.CodeBackendFailed, strings.Repeat("engine error ", 4)) // 52 bytes: legal, but not in 32
		e.Flags |= serialproto.ErrorFlagStream
		e.Chunk = chunk
		return e
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 1 })
	p.mu.Lock()
	f, err := serialproto.Decode(p.sent[0])
	p.mu.Unlock()
	var e serialproto.Error
	if err != nil || f.Cmd != serialproto.CmdError || len(f.Data) > 32 || e.UnmarshalBody(f.Data) != nil || e.Code != serialproto.CodeBackendFailed {
		t.Fatalf("final frame %v (%d data bytes), %v", f, len(f.Data), err)
	}
}
