package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// peerRTT is the round-trip estimate a session towards p would start with:
// the peer's initial RTO, which is also its floor here (1 ms).
func peerRTT(p Peer, window int) *rttState { return newRTTState(p.RTO(window), time.Millisecond) }

// TestStreamRetransmitsWithBackoff: unacknowledged chunks are sent again
// go-back-N once the peer's RTO has passed, the timeout doubling each time,
// and the stream gives up after maxRetransmits timeouts without progress —
// on the fake clock, so the test takes no time whatever the machine's load.
func TestStreamRetransmitsWithBackoff(t *testing.T) {
	p := &recordPeer{} // RTO 10 ms
	clk := newFakeClock()
	st := newStream(p, nil, clk, peerRTT(p, 2), false, 1, 7, 32, 2, time.Millisecond, 3)
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
	st := newStream(p, nil, clk, peerRTT(p, 4), false, 1, 7, 32, 4, time.Millisecond, 3)
	_ = st.write([]byte(strings.Repeat("0123456789", 20)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 4 }) // a window's worth
	sent := func() []int { time.Sleep(20 * time.Millisecond); return p.chunks() }

	st.ack(1, 4, nil) // moves next to 1: chunk 4 goes out
	waitFor(t, func() bool { return len(p.chunks()) == 5 })
	st.ack(1, 3, nil) // a window update
	st.ack(1, 3, nil) // the first duplicate
	if got := sent(); len(got) != 5 {
		t.Fatalf("after a window update and one duplicate: chunks %v, want no retransmission", got)
	}
	st.ack(1, 3, nil) // the second: fast retransmit from 1, as far as the window allows
	waitFor(t, func() bool { return len(p.chunks()) == 8 })
	if got := p.chunks(); !slices.Equal(got[5:], []int{1, 2, 3}) {
		t.Fatalf("chunks %v, want 1 2 3 again after 0..4", got)
	}
}

// sackOf is the bitmap listing chunks (after next) as held.
func sackOf(next int, chunks ...int) []byte {
	var bm []byte
	for _, c := range chunks {
		bm = serialproto.SetSACK(bm, c-next-1)
	}
	return bm
}

// startSACKStream runs a SACK stream of many chunks on the fake clock and
// waits for the first window.
func startSACKStream(t *testing.T, window int) (*recordPeer, *fakeClock, *stream) {
	t.Helper()
	p := &recordPeer{}
	clk := newFakeClock()
	st := newStream(p, nil, clk, peerRTT(p, window), true, 1, 7, 32, window, time.Millisecond, 3)
	_ = st.write([]byte(strings.Repeat("0123456789", 60)))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == window })
	return p, clk, st
}

// settled waits a moment and returns what was sent: the stream is woken
// per ACK, so anything it would (wrongly) send goes out meanwhile.
func settled(p *recordPeer) []int { time.Sleep(20 * time.Millisecond); return p.chunks() }

// TestSACKResendsHolesOnly: with SACK (§8.2) a chunk is lost as soon as a
// chunk sent after it is acknowledged, and only it is sent again — at once,
// without duplicate ACKs or a timeout (the clock never moves). Its
// retransmission is lost again only when a chunk sent after *it* arrives.
func TestSACKResendsHolesOnly(t *testing.T) {
	p, _, st := startSACKStream(t, 4)
	st.ack(1, 4, sackOf(1, 2)) // 0 delivered, 1 missing, 2 held: resend 1; room for 4
	if got := settled(p); !slices.Equal(got, []int{0, 1, 2, 3, 1, 4}) {
		t.Fatalf("chunks %v, want 0 1 2 3 then 1 (the hole) and 4 (new)", got)
	}
	st.ack(1, 4, sackOf(1, 2, 3)) // 3 was sent before 1's retransmission: no news of it
	if got := settled(p); len(got) != 6 {
		t.Fatalf("chunks %v: the ACK of a chunk sent before the retransmission resent it", got)
	}
	st.ack(1, 4, sackOf(1, 2, 3, 4)) // 4 went out after it: 1 is lost again
	if got := settled(p); !slices.Equal(got[6:], []int{1}) {
		t.Fatalf("chunks %v, want 1 once more", got)
	}
	st.ack(5, 4, nil) // all in: 5..8 are new, nothing old goes out again
	if got := settled(p); !slices.Equal(got[7:], []int{5, 6, 7, 8}) {
		t.Fatalf("chunks %v, want 5 6 7 8", got)
	}
}

// TestSACKTimeoutSkipsHeldChunks: when the timer expires, every chunk the
// device has not listed goes out again, and none it holds.
func TestSACKTimeoutSkipsHeldChunks(t *testing.T) {
	p, clk, st := startSACKStream(t, 4)
	st.ack(0, 4, sackOf(0, 1)) // 1 held: 0 was sent before it, so it is lost now
	if got := settled(p); !slices.Equal(got, []int{0, 1, 2, 3, 0}) {
		t.Fatalf("chunks %v, want 0 again", got)
	}
	advanceUntil(t, clk, 5*time.Millisecond, func() bool { return len(p.chunks()) >= 8 })
	if got := settled(p); !slices.Equal(got[5:], []int{0, 2, 3}) {
		t.Fatalf("chunks %v: after the timeout want 0 2 3, not the held 1", got)
	}
}

// startShortSACKStream runs a SACK stream of two TOKENs and the DONE
// (chunks 0, 1, 2) on the fake clock, window 4, and waits for all three.
func startShortSACKStream(t *testing.T) (*recordPeer, *fakeClock, *stream) {
	t.Helper()
	p := &recordPeer{}
	clk := newFakeClock()
	st := newStream(p, nil, clk, peerRTT(p, 4), true, 1, 7, 32, 4, time.Millisecond, 3)
	_ = st.write([]byte(strings.Repeat("0123456789", 4)))
	st.finish(func(chunk uint16, n, crc uint32) serialproto.Message {
		return &serialproto.Done{Chunk: chunk, TextBytes: n, TextCRC32C: crc}
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 3 })
	return p, clk, st
}

// TestSACKTimeoutProbesWhenAllListed: the device listed every chunk
// outstanding, and the ACK that moved next past them was lost (it took
// them and ended). No hole is left to resend; on the timer the stream
// probes with the last chunk sent, which a finished device acknowledges
// again. It sent nothing, and the stream held the device's place until
// its retries ran out (the C and Go devices on the 10 % loss link got
// BUSY).
func TestSACKTimeoutProbesWhenAllListed(t *testing.T) {
	p, clk, st := startShortSACKStream(t)
	st.ack(0, 4, sackOf(0, 1, 2)) // 1 and 2 held: 0 lost, resent
	st.ack(1, 4, sackOf(1, 2))    // 0 in; 1 and 2 listed before
	// The device delivers 1 and 2 and ends; its ACK of next 3 is lost.
	n := len(settled(p))
	advanceUntil(t, clk, 5*time.Millisecond, func() bool { return len(p.chunks()) > n })
	if got := p.chunks(); got[n] != 2 {
		t.Fatalf("chunks %v: after the timeout want a probe with chunk 2, the last sent", got)
	}
	if st.ack(3, 4, nil) != true {
		t.Fatal("the ACK the probe brings does not end the stream")
	}
}

// TestSACKTimeoutProbesHeldFinal: the device holds the final chunk (it
// listed it) and the timer finds a hole before it: the hole goes out again,
// and the final chunk too, as a probe — a device that took the hole's
// first copy and ended, its ACK lost, keeps no memory of the stream and
// acknowledges only a final chunk (the C library). Without the probe the
// hole was resent alone, unanswered, until the stream gave up.
func TestSACKTimeoutProbesHeldFinal(t *testing.T) {
	p, clk, st := startShortSACKStream(t)
	st.ack(0, 4, sackOf(0, 1, 2)) // 1 and the DONE held: 0 lost, resent
	n := len(settled(p))
	advanceUntil(t, clk, 5*time.Millisecond, func() bool { return len(p.chunks()) >= n+2 })
	if got := p.chunks()[n:]; !slices.Equal(got, []int{0, 2}) && !slices.Equal(got, []int{2, 0}) {
		t.Fatalf("after the timeout %v, want the hole 0 and the held final 2 as a probe", got)
	}
}

// TestRTOFollowsTheRoundTrip: the stream's timer is the session's RFC 6298
// estimate: a measured 30 ms round trip gives 30 + 4 × 15 = 90 ms, and a
// chunk acknowledged after its retransmission gives no sample (Karn).
func TestRTOFollowsTheRoundTrip(t *testing.T) {
	p := &recordPeer{}
	clk := newFakeClock()
	rtt := newRTTState(250*time.Millisecond, time.Millisecond)
	st := newStream(p, nil, clk, rtt, false, 1, 7, 32, 1, time.Millisecond, 8)
	_ = st.write([]byte(strings.Repeat("0123456789", 10)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 1 })
	clk.Advance(30 * time.Millisecond)
	st.ack(1, 1, nil)
	if got := rtt.rto(); got != 90*time.Millisecond {
		t.Fatalf("RTO %v after one 30 ms sample, want 90 ms", got)
	}
	waitFor(t, func() bool { return len(p.chunks()) == 2 })
	start := clk.Now()
	advanceUntil(t, clk, time.Millisecond, func() bool { return len(p.chunks()) == 3 }) // chunk 1 again
	if waited := clk.Now().Sub(start); waited < 90*time.Millisecond || waited > 100*time.Millisecond {
		t.Fatalf("retransmitted after %v, want the 90 ms RTO", waited)
	}
	clk.Advance(5 * time.Millisecond)
	samples := func() uint64 { rtt.mu.Lock(); defer rtt.mu.Unlock(); return rtt.e.Samples() }
	before := samples()
	st.ack(2, 1, nil) // chunk 1 was sent twice: which copy arrived is unknown
	if samples() != before || rtt.rto() != 90*time.Millisecond {
		t.Fatalf("a retransmitted chunk's ACK fed the estimate: %d samples, RTO %v", samples()-before, rtt.rto())
	}
}

// TestAbandonedStreamFallsSilent: a stream whose seq a new request took
// (§5: 256 requests later, its final ACK lost) sends nothing more, not even
// on its timer: its chunks would pass for the new request's.
func TestAbandonedStreamFallsSilent(t *testing.T) {
	p := &recordPeer{}
	clk := newFakeClock()
	st := newStream(p, nil, clk, peerRTT(p, 2), true, 1, 7, 32, 2, time.Millisecond, 8)
	_ = st.write([]byte(strings.Repeat("0123456789", 10)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 2 })
	st.abandon()
	if err := advanceUntilDone(t, clk, 5*time.Millisecond, errc); !errors.Is(err, errSuperseded) {
		t.Fatalf("run: %v", err)
	}
	clk.Advance(time.Second)
	if got := settled(p); len(got) != 2 {
		t.Fatalf("chunks %v after abandon", got)
	}
}

// udpLikePeer is recordPeer with UDP's initial RTO of 250 ms.
type udpLikePeer struct{ recordPeer }

func (p *udpLikePeer) RTO(int) time.Duration { return serialproto.InitialRTO }

// TestStreamGivesUpAfterTheHorizon: a session whose estimate learned a
// 1 ms RTO retransmits from 1 ms, doubling, but gives up only once both the
// retransmission count and serialproto.RetryHorizon (the timeouts of a
// 100 ms timer) are spent — a link that stalls for a second loses no
// request for having been fast before. Fails when the count alone decides.
func TestStreamGivesUpAfterTheHorizon(t *testing.T) {
	p := &udpLikePeer{}
	clk := newFakeClock()
	rtt := newRTTState(p.RTO(2), time.Millisecond)
	for range 8 {
		rtt.sample(200 * time.Microsecond) // a fast link: RTO at the 1 ms floor
	}
	const retries = 3
	st := newStream(p, nil, clk, rtt, false, 1, 7, 32, 2, time.Millisecond, retries)
	_ = st.write([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- st.run(ctx) }()
	waitFor(t, func() bool { return len(p.chunks()) == 2 })
	start := clk.Now()
	if err := advanceUntilDone(t, clk, 50*time.Millisecond, errc); !errors.Is(err, errGaveUp) {
		t.Fatalf("want errGaveUp, got %v", err)
	}
	horizon := serialproto.RetryHorizon(p.RTO(2), retries) // 100+200+400+800 ms
	if took := clk.Now().Sub(start); took < horizon {
		t.Fatalf("gave up after %v, before the horizon %v", took, horizon)
	}
	// The first retransmission went out after ~1 ms, not 100: the low RTO
	// still repairs a loss quickly.
	if n := len(p.chunks()); n <= 2+2*retries {
		t.Fatalf("%d chunks sent: the stream stopped retransmitting at the count", n)
	}
}
