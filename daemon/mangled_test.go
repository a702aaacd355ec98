package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// manglingTransport turns the device's first ACK into a frame of version 9
// with a valid CRC: a corruption the CRC-8 missed, as happens on a noisy
// UART about once in 300 corrupted frames.
type manglingTransport struct {
	device.Transport
	mangled  bool
	rejected chan struct{} // closed when the daemon's ERROR for it arrives
}

func (m *manglingTransport) Recv(deadline time.Time) (serialproto.Frame, error) {
	f, err := m.Transport.Recv(deadline)
	if err == nil && f.Cmd == serialproto.CmdError && m.mangled {
		select {
		case <-m.rejected:
		default:
			close(m.rejected)
		}
	}
	return f, err
}

func (m *manglingTransport) Send(raw []byte) error {
	if f, err := serialproto.Decode(raw); err == nil && f.Cmd == serialproto.CmdAck && !m.mangled {
		m.mangled = true
		f.Version = 9
		raw, _ = serialproto.AppendFrame(nil, f)
	}
	return m.Transport.Send(raw)
}

// TestMangledAckDoesNotEndTheStream: the daemon answers the mangled ACK
// with ERROR UNSUPPORTED_VERSION carrying the request's seq; the device
// must not take that for the end of its accepted request (only DONE or an
// ERROR with the STREAM flag ends it), and gets the whole answer.
func TestMangledAckDoesNotEndTheStream(t *testing.T) {
	// The engine holds the rest of its answer until the device has the
	// ERROR in hand, so the ERROR arrives mid-stream, before DONE.
	rejected := make(chan struct{})
	_, addr := startDaemon(t, Config{}, &testEngine{hold: rejected})
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	mt := &manglingTransport{Transport: tr, rejected: rejected}
	c := device.New(mt, device.Config{DeviceID: "mangled", RTO: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	prompt := "the soil is dry"
	var text []byte
	if _, err := c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(p []byte) error { text = append(text, p...); return nil }); err != nil {
		t.Fatalf("Ask: %v", err)
	}
	if !mt.mangled {
		t.Fatal("no ACK was mangled: the test proves nothing")
	}
	if string(text) != answerFor(prompt) {
		t.Fatalf("text %q, want %q", text, answerFor(prompt))
	}
}
