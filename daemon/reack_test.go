package daemon

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// loseFinalAck drops the device's first ACK after a DONE arrived, as a
// lossy link would.
type loseFinalAck struct {
	device.Transport
	mu      sync.Mutex
	sawDone bool
	dropped int
}

func (l *loseFinalAck) Recv(deadline time.Time) (serialproto.Frame, error) {
	f, err := l.Transport.Recv(deadline)
	if err == nil && f.Cmd == serialproto.CmdDone {
		l.mu.Lock()
		l.sawDone = true
		l.mu.Unlock()
	}
	return f, err
}

func (l *loseFinalAck) Send(frame []byte) error {
	l.mu.Lock()
	drop := false
	if f, err := serialproto.Decode(frame); err == nil && f.Cmd == serialproto.CmdAck && l.sawDone && l.dropped == 0 {
		drop, l.sawDone = true, false
		l.dropped++
	}
	l.mu.Unlock()
	if drop {
		return nil
	}
	return l.Transport.Send(frame)
}

// TestFinalAckLost: the device's ACK of DONE is lost and it has moved on to
// other requests; when the daemon retransmits DONE the device acknowledges
// it again, so the finished stream lets go of the device's request place
// at once rather than after the daemon's retransmissions run out.
func TestFinalAckLost(t *testing.T) {
	d, addr, clk := startDaemonOnClock(t, Config{}, &testEngine{})
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	lossy := &loseFinalAck{Transport: tr}
	c := device.New(lossy, device.Config{DeviceID: "moved-on", RTO: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	var text []byte
	if _, err := c.Ask(ctx, &serialproto.Infer{Prompt: "hi"}, func(b []byte) error { text = append(text, b...); return nil }); err != nil || string(text) != answerFor("hi") {
		t.Fatalf("%q %v", text, err)
	}
	if lossy.dropped != 1 {
		t.Fatal("the final ACK was not dropped: the test proves nothing")
	}
	active := func() int {
		for _, s := range d.Snapshot(ctx).Sessions {
			return s.Active
		}
		return -1
	}
	if active() != 1 {
		t.Fatalf("the stream should still wait for its final ACK, active %d", active())
	}
	// The device goes on with its life (PINGs); the daemon's DONE
	// retransmission (RTO 250 ms on UDP) must be acknowledged on the way.
	start := clk.Now()
	advanceUntil(t, clk, 250*time.Millisecond, func() bool {
		if _, err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		return active() == 0
	})
	if waited := clk.Now().Sub(start); waited > time.Second {
		t.Fatalf("the finished stream held its request place for %v: the DONE's first retransmission was not acknowledged", waited)
	}
}
