package daemon

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// keyPeer is a peer known only by its key, for the session table's tests.
type keyPeer string

func (p keyPeer) Key() string           { return string(p) }
func (p keyPeer) LinkName() string      { return "udp:test" }
func (p keyPeer) Addr() netip.AddrPort  { return netip.AddrPort{} }
func (p keyPeer) Send([]byte) error     { return nil }
func (p keyPeer) ByteStream() bool      { return false }
func (p keyPeer) BoundDevice() string   { return "" }
func (p keyPeer) RTO(int) time.Duration { return time.Second }

// tableHello asks the table to decide on a HELLO from peer, as the daemon
// does, making a bare session when one is to open.
func tableHello(tb *sessionTable, max int, now time.Time, peer, device string, nonce uint32, keyed bool) helloResult {
	return tb.hello(helloRequest{
		peerKey: peer, deviceID: device, bootNonce: nonce, keyed: keyed,
		maxSessions: max, heartbeat: time.Second, now: now, draining: func() bool { return false },
		create: func() (*session, error) {
			s := &session{peer: keyPeer(peer), deviceID: device, bootNonce: nonce, opened: now,
				reasm: serialproto.NewReassembler(serialproto.ReassemblerConfig{})}
			s.seen.Store(now.UnixNano())
			return s, nil
		},
	})
}

// TestSessionTableHello: a HELLO opens a session; the same HELLO again is
// a retransmission; a new boot nonce replaces the session (the caller
// closes the old one); a keyed device's earlier HELLO played back is
// refused without touching the live session.
func TestSessionTableHello(t *testing.T) {
	stats := &Stats{}
	tb := newSessionTable(stats)
	now := time.Now()
	first := tableHello(tb, 8, now, "p1", "dev", 1, true)
	if first.outcome != helloOpened || first.old != nil || tb.get("p1") != first.session || stats.Sessions.Load() != 1 {
		t.Fatalf("first HELLO: %+v", first)
	}
	if again := tableHello(tb, 8, now, "p1", "dev", 1, true); again.outcome != helloRepeated || again.session != first.session {
		t.Fatalf("retransmitted HELLO: %+v", again)
	}
	reboot := tableHello(tb, 8, now, "p1", "dev", 2, true)
	if reboot.outcome != helloOpened || reboot.old != first.session || tb.get("p1") != reboot.session || stats.Sessions.Load() != 1 {
		t.Fatalf("new boot nonce: %+v", reboot)
	}
	tb.remove(first.session) // what closing the replaced session does: nothing, it is not in the table
	if tb.get("p1") != reboot.session || stats.Sessions.Load() != 1 {
		t.Fatal("removing a replaced session removed its successor")
	}
	if replay := tableHello(tb, 8, now, "p1", "dev", 1, true); replay.outcome != helloReplayed || tb.get("p1") != reboot.session {
		t.Fatalf("replayed HELLO: %+v", replay)
	}
	if unkeyed := tableHello(tb, 8, now, "p2", "plain", 1, false); unkeyed.outcome != helloOpened {
		t.Fatalf("an unkeyed device's HELLO: %+v", unkeyed)
	}
	if again := tableHello(tb, 8, now, "p3", "plain", 1, false); again.outcome == helloReplayed {
		t.Fatal("an unkeyed device's boot nonce was remembered")
	}
	tb.remove(reboot.session)
	if tb.get("p1") != nil || stats.Sessions.Load() != 2 {
		t.Fatalf("after remove: %d sessions, want p2 and p3", stats.Sessions.Load())
	}
}

// TestSessionTableEviction: a full table makes room by evicting the
// longest-silent idle session, else the oldest half-open one; a device
// being served (it took an answer, it has a request) is never evicted.
func TestSessionTableEviction(t *testing.T) {
	stats := &Stats{}
	tb := newSessionTable(stats)
	t0 := time.Now()
	served := tableHello(tb, 2, t0, "served", "served", 1, false).session
	served.delivered.Store(true)
	served.places.take(1) // a request in flight
	halfOpen := tableHello(tb, 2, t0.Add(time.Millisecond), "half", "half", 1, false).session

	// Both have been silent for longer than a heartbeat; the busy one
	// is not idle, so the half-open one goes.
	later := t0.Add(5 * time.Second)
	res := tableHello(tb, 2, later, "new", "new", 1, false)
	if res.outcome != helloOpened || res.evicted != halfOpen || stats.Evicted.Load() != 1 || tb.get("half") != nil {
		t.Fatalf("eviction: %+v", res)
	}
	// Now full of a served device and a fresh one that took an answer,
	// both busy and talking.
	res.session.delivered.Store(true)
	res.session.places.take(1)
	served.seen.Store(later.UnixNano())
	if full := tableHello(tb, 2, later, "more", "more", 1, false); full.outcome != helloFull || full.evicted != nil {
		t.Fatalf("nobody to evict: %+v", full)
	}
	// Once the served device is done and silent, it is the idle one.
	served.places.give()
	if res := tableHello(tb, 2, later.Add(2*time.Second), "more", "more", 1, false); res.outcome != helloOpened || res.evicted != served {
		t.Fatalf("idle eviction: %+v", res)
	}
	if stats.Sessions.Load() != 2 || stats.Evicted.Load() != 2 {
		t.Fatalf("sessions %d, evicted %d", stats.Sessions.Load(), stats.Evicted.Load())
	}
}

// TestSessionTableRefusals: draining, and a session that cannot be made.
func TestSessionTableRefusals(t *testing.T) {
	tb := newSessionTable(&Stats{})
	req := helloRequest{peerKey: "p", deviceID: "d", maxSessions: 4, draining: func() bool { return true }}
	if res := tb.hello(req); res.outcome != helloDraining || helloRefusal(res).Code.String() != "SHUTTING_DOWN" {
		t.Fatalf("draining: %+v", res)
	}
	req.draining = func() bool { return false }
	req.create = func() (*session, error) { return nil, errors.New("no signer") }
	if res := tb.hello(req); res.outcome != helloFailed || tb.get("p") != nil {
		t.Fatalf("create failed: %+v", res)
	}
}

// TestSessionTableExpiry: expire hands back the sessions silent for longer
// than the limit and leaves the others.
func TestSessionTableExpiry(t *testing.T) {
	tb := newSessionTable(&Stats{})
	t0 := time.Now()
	old := tableHello(tb, 2, t0, "old", "old", 1, false).session
	tableHello(tb, 2, t0.Add(2*time.Second), "fresh", "fresh", 1, false)
	expired := tb.expire(t0.Add(3500*time.Millisecond), 3*time.Second)
	if len(expired) != 1 || expired[0] != old || len(tb.all()) != 2 {
		t.Fatalf("expired %v of %d", expired, len(tb.all()))
	}
}

// TestSessionTableRetryAfterBusy: a keyed device's HELLO refused for a
// full table may be sent again with the same boot nonce (the C library
// does) and opens a session once there is room; once a HELLO of the device
// is admitted, every earlier boot nonce, refused ones included, is a
// replay.
func TestSessionTableRetryAfterBusy(t *testing.T) {
	tb := newSessionTable(&Stats{})
	now := time.Now()
	holder := tableHello(tb, 1, now, "p0", "other", 1, false).session
	holder.delivered.Store(true)
	holder.places.take(1) // served and busy: not evictable

	for i := range 3 {
		if res := tableHello(tb, 1, now, "p1", "dev", 7, true); res.outcome != helloFull {
			t.Fatalf("try %d while full: %+v", i, res)
		}
	}
	if res := tableHello(tb, 1, now, "p1", "dev", 8, true); res.outcome != helloFull {
		t.Fatalf("another boot while full: %+v", res)
	}
	holder.places.give()
	tb.remove(holder)
	opened := tableHello(tb, 1, now, "p1", "dev", 7, true)
	if opened.outcome != helloOpened {
		t.Fatalf("the retry after BUSY: %+v, want opened", opened)
	}
	for _, n := range []uint32{7, 8} {
		if res := tableHello(tb, 2, now, "p2", "dev", n, true); res.outcome != helloReplayed || tb.get("p1") != opened.session {
			t.Fatalf("boot nonce %d played back after the admission: %+v", n, res)
		}
	}
}
