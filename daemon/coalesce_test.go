package daemon

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestFirstTokenIsNotHeldBack: on an idle link the first token goes out at
// once, not when the flush interval ends (here an hour): the engine holds
// its second token until the device has seen the first, so a daemon that
// waited to fill the frame would never answer within the test's deadline.
func TestFirstTokenIsNotHeldBack(t *testing.T) {
	e := &testEngine{hold: make(chan struct{})}
	_, addr := startDaemon(t, Config{FlushInterval: time.Hour}, e)
	c := dial(t, addr, device.Config{DeviceID: "eager"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var release sync.Once
	var text []byte
	_, err := c.Ask(ctx, &serialproto.Infer{Prompt: "one two three"}, func(p []byte) error {
		text = append(text, p...)
		release.Do(func() { close(e.hold) })
		return nil
	})
	if err != nil {
		t.Fatalf("the first token waited for the flush interval: %v", err)
	}
	if got, want := string(text), answerFor("one two three"); got != want {
		t.Fatalf("text %q, want %q", got, want)
	}
}

// TestBusyLinkCoalesces: while half the device's window is unacknowledged
// the link is not keeping up, so text accumulates into one frame instead of
// going out a token at a time; the acknowledgement releases it.
func TestBusyLinkCoalesces(t *testing.T) {
	p := &recordPeer{}
	st := newStream(patientPeer{p}, nil, newFakeClock(), peerRTT(patientPeer{p}, 2), false, 1, 7, 64, 2, time.Hour, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- st.run(ctx) }()

	_ = st.write([]byte("a"))
	waitFor(t, func() bool { return len(p.chunks()) == 1 }) // idle link: at once
	for _, w := range []string{"b", "c", "d"} {
		_ = st.write([]byte(w))
	}
	// Give the stream every chance to (wrongly) send: it is woken per write.
	st.notify()
	time.Sleep(20 * time.Millisecond)
	if n := len(p.chunks()); n != 1 {
		t.Fatalf("%d frames with half the window unacknowledged, want 1", n)
	}
	st.ack(1, 2, nil)
	waitFor(t, func() bool { return len(p.chunks()) == 2 })
	st.finish(func(chunk uint16, n, crc uint32) serialproto.Message {
		return &serialproto.Done{Chunk: chunk, TextBytes: n, TextCRC32C: crc}
	})
	waitFor(t, func() bool { return len(p.chunks()) == 3 })
	st.ack(3, 2, nil)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	var texts []string
	p.mu.Lock()
	for _, raw := range p.sent[:2] {
		f, err := serialproto.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, string(f.Data[2:]))
	}
	p.mu.Unlock()
	if texts[0] != "a" || texts[1] != "bcd" {
		t.Fatalf("TOKEN texts %q, want [a bcd]", texts)
	}
}

// patientPeer never times out a chunk within a test: what it records is
// what the stream chose to send, not retransmissions.
type patientPeer struct{ *recordPeer }

func (patientPeer) RTO(int) time.Duration { return time.Hour }
