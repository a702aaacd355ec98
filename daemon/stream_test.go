package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestStreamRetransmitsWithBackoff: unacknowledged chunks are sent again
// go-back-N once the peer's RTO has passed, the timeout doubling each time,
// and the stream gives up after maxRetransmits timeouts without progress —
// on the fake clock, so the test takes no time whatever the machine's load.
func TestStreamRetransmitsWithBackoff(t *testing.T) {
	p := &recordPeer{} // RTO 10 ms
	clk := newFakeClock()
	st := newStream(p, nil, clk, 1, 7, 32, 2, time.Millisecond, 3)
	_ = st.write([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 2 }) // a window's worth

	start := clk.Now()
	var at []time.Duration // when each go-back-N round went out
	for len(at) < 3 {
		sent := len(p.chunks())
		advanceUntil(t, clk, 5*time.Millisecond, func() bool { return len(p.chunks()) >= sent+2 })
		at = append(at, clk.Now().Sub(start))
	}
	if err := advanceUntilDone(t, clk, 5*time.Millisecond, errc); !errors.Is(err, errGaveUp) {
		t.Fatalf("after 3 retransmissions without progress: %v", err)
	}
	// 10, then 20, then 40 ms after the previous transmission.
	if at[0] < 10*time.Millisecond || at[1]-at[0] < 20*time.Millisecond || at[2]-at[1] < 40*time.Millisecond {
		t.Fatalf("retransmissions at %v: the timeout must start at the RTO and double", at)
	}
	if got := p.chunks(); len(got) != 8 || got[2] != 0 || got[3] != 1 {
		t.Fatalf("chunks sent %v, want 0 1 three times more", got)
	}
}

// TestFastRetransmitCountsDuplicatesOnly: two duplicate ACKs — same next,
// same window, chunks outstanding — make the stream retransmit from next at
// once (§8.2). The ACK that moved next is not a duplicate, and an ACK that
// only changes the window is a window update: it counts for nothing, or a
// device reopening its window would trigger a retransmission of chunks
// still on their way.
func TestFastRetransmitCountsDuplicatesOnly(t *testing.T) {
	p := &recordPeer{}
	clk := newFakeClock() // never advanced: no timeout can retransmit
	st := newStream(p, nil, clk, 1, 7, 32, 4, time.Millisecond, 3)
	_ = st.write([]byte(strings.Repeat("0123456789", 20)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 4 }) // a window's worth
	sent := func() []int { time.Sleep(20 * time.Millisecond); return p.chunks() }

	st.ack(1, 4) // moves next to 1: chunk 4 goes out
	waitFor(t, func() bool { return len(p.chunks()) == 5 })
	st.ack(1, 3) // a window update
	st.ack(1, 3) // the first duplicate
	if got := sent(); len(got) != 5 {
		t.Fatalf("after a window update and one duplicate: chunks %v, want no retransmission", got)
	}
	st.ack(1, 3) // the second: fast retransmit from 1, as far as the window allows
	waitFor(t, func() bool { return len(p.chunks()) == 8 })
	if got := p.chunks(); !slices.Equal(got[5:], []int{1, 2, 3}) {
		t.Fatalf("chunks %v, want 1 2 3 again after 0..4", got)
	}
}
