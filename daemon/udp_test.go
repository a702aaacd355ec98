package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// recordingHandler keeps what a link hands it (copies: Frame.Data is the
// link's buffer).
type recordingHandler struct {
	mu     sync.Mutex
	frames map[netip.AddrPort][]uint8 // seqs by source
	bad    []error
}

func (h *recordingHandler) HandleFrame(p Peer, f serialproto.Frame) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.frames == nil {
		h.frames = map[netip.AddrPort][]uint8{}
	}
	h.frames[p.Addr()] = append(h.frames[p.Addr()], f.Seq)
}

func (h *recordingHandler) HandleBadFrame(_ Peer, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bad = append(h.bad, err)
}

func (h *recordingHandler) LinkStats(string, int64, int) {}

func (h *recordingHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.bad)
	for _, s := range h.frames {
		n += len(s)
	}
	return n
}

// TestUDPLinkDelivers: every datagram reaches the handler once, in order
// per source, with the source address ReadFromUDPAddrPort would give
// (IPv4-mapped on a dual-stack socket), and an oversize one is a bad frame
// (trailing bytes) — read one at a time and in batches alike.
func TestUDPLinkDelivers(t *testing.T) {
	const senders, each = 3, 60
	for _, tc := range []struct {
		name, listen, from string
		mapped             bool // the socket sees an IPv4 source IPv4-mapped
	}{
		{"ipv4", "127.0.0.1:0", "127.0.0.1", false},
		{"ipv6", "[::1]:0", "::1", false},
		{"dual-stack socket, ipv4 source", "[::]:0", "127.0.0.1", true},
	} {
		for _, batch := range []int{1, udpBatch} {
			t.Run(fmt.Sprintf("%s/batch %d", tc.name, batch), func(t *testing.T) {
				l, err := ListenUDP(tc.listen)
				if err != nil {
					t.Skipf("cannot listen on %s here: %v", tc.listen, err)
				}
				l.batch = batch
				h := &recordingHandler{}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- l.Run(ctx, h) }()
				defer func() {
					cancel()
					if err := <-done; err != nil {
						t.Errorf("Run: %v", err)
					}
				}()
				to := netip.AddrPortFrom(netip.MustParseAddr(tc.from), l.Addr().Port())
				want := map[netip.AddrPort]bool{}
				for s := range senders {
					c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(tc.from)}, net.UDPAddrFromAddrPort(to))
					if err != nil {
						t.Skipf("cannot send from %s here: %v", tc.from, err)
					}
					defer c.Close()
					src := c.LocalAddr().(*net.UDPAddr).AddrPort()
					if tc.mapped {
						src = netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
					}
					want[src] = true
					for i := range each {
						raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Seq: uint8(s*each + i)})
						if _, err := c.Write(raw); err != nil {
							t.Fatal(err)
						}
					}
					if s == 0 {
						full, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Data: make([]byte, serialproto.MaxData)})
						if _, err := c.Write(append(full, make([]byte, 9)...)); err != nil {
							t.Fatal(err)
						}
					}
				}
				deadline := time.Now().Add(5 * time.Second)
				for h.count() < senders*each+1 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				h.mu.Lock()
				defer h.mu.Unlock()
				// The kernel cut the oversize datagram to the buffer: one byte
				// past the longest frame.
				if len(h.bad) != 1 || !errors.Is(h.bad[0], serialproto.ErrTrailing) || !strings.HasSuffix(h.bad[0].Error(), ": 1") {
					t.Errorf("bad frames %v, want one with 1 trailing byte", h.bad)
				}
				if len(h.frames) != senders {
					t.Fatalf("frames from %d sources, want %d: %v", len(h.frames), senders, h.frames)
				}
				for src, seqs := range h.frames {
					if !want[src] {
						t.Errorf("frames from %v, which sent none (sources %v)", src, want)
						continue
					}
					if len(seqs) != each {
						t.Errorf("%v: %d frames, want %d", src, len(seqs), each)
						continue
					}
					for i := 1; i < len(seqs); i++ {
						if seqs[i] != seqs[i-1]+1 {
							t.Errorf("%v: seqs out of order: %v", src, seqs)
							break
						}
					}
				}
			})
		}
	}
}

// TestRateLimitBeforeDecoding: a source over its rate has its datagrams
// dropped at the link's gate, before decoding: counted rate-limited, not
// as bad frames, and never answered (garbage may come from a spoofed
// source).
func TestRateLimitBeforeDecoding(t *testing.T) {
	d, addr, _ := startDaemonOnClock(t, Config{PeerRate: 50, PeerBurst: 20}, &testEngine{})
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const sent = 100
	for range sent {
		if _, err := c.Write([]byte("not a frame at all")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return d.Stats().BadFrames.Load()+d.Stats().RateLimited.Load() == sent })
	if bad, limited := d.Stats().BadFrames.Load(), d.Stats().RateLimited.Load(); bad != 20 || limited != sent-20 {
		t.Fatalf("bad frames %d (want the burst, 20), rate-limited %d (want %d)", bad, limited, sent-20)
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(make([]byte, 512)); err == nil {
		t.Fatalf("garbage was answered (%d bytes)", n)
	}
}

// TestUDPGateAllocatesNothing: a datagram from a source over its rate
// costs no allocation between the read and its drop.
func TestUDPGateAllocatesNothing(t *testing.T) {
	d, err := newDaemon(Config{PeerRate: 1, PeerBurst: 1}, &testEngine{}, nil, newFakeClock())
	if err != nil {
		t.Fatal(err)
	}
	l := &UDPLink{name: "udp:test"}
	from := netip.MustParseAddrPort("192.0.2.7:4000")
	raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdError, Data: []byte{1}})
	raw = append(raw, 0)       // not a sound frame: the once-a-second RATE_LIMITED answer is never due
	l.deliver(d, d, from, raw) // the burst's one token
	if allocs := testing.AllocsPerRun(1000, func() { l.deliver(d, d, from, raw) }); allocs != 0 {
		t.Fatalf("%.1f allocations per dropped datagram", allocs)
	}
	if got := d.Stats().RateLimited.Load(); got < 1000 {
		t.Fatalf("rate-limited %d of 1001", got)
	}
}
