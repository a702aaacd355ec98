package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// delayedCopyTransport plays the network that duplicated a device's INFER
// and delivered the copy late: when the daemon's BUSY for the original
// arrives, it first frees the engine, then delivers the copy and waits for
// the daemon to run it — all before the device sees the BUSY.
type delayedCopyTransport struct {
	device.Transport
	infer   []byte // the first INFER the device sent
	onBusy  func(copyOfInfer []byte)
	handled bool
}

func (t *delayedCopyTransport) Send(raw []byte) error {
	if f, err := serialproto.Decode(raw); err == nil && f.Cmd == serialproto.CmdInfer && t.infer == nil {
		t.infer = append([]byte(nil), raw...)
	}
	return t.Transport.Send(raw)
}

func (t *delayedCopyTransport) Recv(deadline time.Time) (serialproto.Frame, error) {
	f, err := t.Transport.Recv(deadline)
	if err == nil && f.Cmd == serialproto.CmdError && !t.handled {
		if m, merr := serialproto.NewMessage(f.Cmd); merr == nil && m.UnmarshalBody(f.Data) == nil && m.(*serialproto.Error).Code == serialproto.CodeBusy {
			t.handled = true
			t.onBusy(t.infer)
		}
	}
	return f, err
}

// TestRetryAfterBusyRunsOnce: a device retries a BUSY INFER while a
// delayed copy of the refused one reaches the daemon after the engine has
// room and is accepted. The retry reuses the seq (§12), so the copy and the
// retry are one request: the engine runs the prompt once, and the device
// gets its whole answer. A retry under a new seq would run it twice.
func TestRetryAfterBusyRunsOnce(t *testing.T) {
	e := &testEngine{release: make(chan struct{})}
	d, addr := startDaemon(t, Config{MaxConcurrent: 1, MaxQueue: -1}, e)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Device A holds the only engine slot until the engine is released.
	a := dial(t, addr, device.Config{DeviceID: "occupant"})
	aDone := make(chan error, 1)
	go func() {
		_, err := a.Ask(ctx, &serialproto.Infer{Prompt: "occupy"}, func([]byte) error { return nil })
		aDone <- err
	}()
	waitFor(t, func() bool { return e.calls.Load() == 1 })

	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	dt := &delayedCopyTransport{Transport: tr}
	dt.onBusy = func(copyOfInfer []byte) {
		close(e.release)
		waitFor(t, func() bool { return d.admission.queued.Load() == 0 })
		if err := tr.Send(copyOfInfer); err != nil { // the late duplicate
			t.Error(err)
		}
		waitFor(t, func() bool { return e.calls.Load() == 2 })
	}
	b := device.New(dt, device.Config{DeviceID: "retrier"})
	if err := b.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	prompt := "is the pump on"
	var text []byte
	_, retried, err := b.AskRetrying(ctx, &serialproto.Infer{Prompt: prompt}, func(p []byte) error { text = append(text, p...); return nil }, 3)
	if err != nil {
		t.Fatalf("AskRetrying: %v", err)
	}
	if !dt.handled || retried == 0 {
		t.Fatalf("no BUSY was retried (handled %v, retried %d): the test proves nothing", dt.handled, retried)
	}
	if string(text) != answerFor(prompt) {
		t.Fatalf("text %q, want %q", text, answerFor(prompt))
	}
	if err := <-aDone; err != nil {
		t.Fatalf("occupant: %v", err)
	}
	if n := e.calls.Load(); n != 2 {
		t.Fatalf("engine ran %d times for 2 requests: the retried request ran twice", n)
	}
}
