package daemon

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// AccessPolicy says who may use the daemon and how much (docs/reliability.md).
// The zero AccessPolicy lets every device in, with any model and no budget.
// Violations are answered with the protocol's errors, never with silence:
// FORBIDDEN for a device, source or model the policy refuses, RATE_LIMITED
// for a spent token budget.
type AccessPolicy struct {
	// Networks, when not empty, are the UDP source networks allowed to
	// open sessions (e.g. 192.168.4.0/24); HELLOs from elsewhere get
	// FORBIDDEN.
	Networks []netip.Prefix
	// Ports, when not empty, are the serial ports (paths or globs, as in
	// --serial) allowed to open sessions.
	Ports []string
	// Devices holds per-device rules by device id.
	Devices map[string]DeviceRule
	// OnlyListed refuses device ids not in Devices (or in Keys) with FORBIDDEN.
	OnlyListed bool
}

// DeviceRule is what one device may do.
type DeviceRule struct {
	// Models, when not empty, are the model names the device may ask for
	// (INFER's MODEL option). An INFER without MODEL runs the daemon's
	// default model, which the operator chose, and is always allowed.
	Models []string
	// TokenBudget is how many tokens the device may generate per
	// BudgetPeriod (across its sessions); 0: no budget. A request reserves
	// its MAX_TOKENS, cut to what is left, and gives back what it did not
	// use; once the budget is spent, INFERs get RATE_LIMITED until the
	// period ends.
	TokenBudget  int
	BudgetPeriod time.Duration // default 24 h
}

func (p AccessPolicy) validate() error {
	for _, pat := range p.Ports {
		if _, err := filepath.Match(pat, ""); err != nil {
			return fmt.Errorf("daemon: policy port %q: %w", pat, err)
		}
	}
	for id, r := range p.Devices {
		if !serialproto.ValidDeviceID(id) {
			return fmt.Errorf("daemon: policy: %q is not a device id", id)
		}
		if r.TokenBudget < 0 || r.BudgetPeriod < 0 {
			return fmt.Errorf("daemon: policy: device %s: negative budget", id)
		}
	}
	return nil
}

// admitPeer checks a HELLO's source and device id against the policy; the
// returned error's text goes to the device.
func (d *Daemon) admitPeer(p Peer, deviceID string) *serialproto.Error {
	pol := &d.conf().Policy
	// A link that vouches for the device id (MQTT: the broker's ACL let
	// only that device publish on the topic) admits no other id: a device
	// cannot open a session under another's name, signed or not.
	bound := p.BoundDevice()
	if bound != "" && bound != deviceID {
		return serialproto.NewError(serialproto.CodeForbidden, "device id differs from the link's")
	}
	// Networks bind datagram peers, ports bind byte streams, and the broker
	// binds devices behind it. A datagram peer without a source address
	// matches no network: refused, never waved through.
	if len(pol.Networks) > 0 && !p.ByteStream() && bound == "" {
		ip := p.Addr().Addr().Unmap()
		if !slices.ContainsFunc(pol.Networks, func(n netip.Prefix) bool { return n.Contains(ip) }) {
			return serialproto.NewError(serialproto.CodeForbidden, "source network not allowed")
		}
	}
	if len(pol.Ports) > 0 && p.ByteStream() {
		port, _ := strings.CutPrefix(p.LinkName(), "serial:")
		if !slices.ContainsFunc(pol.Ports, func(pat string) bool { ok, _ := filepath.Match(pat, port); return ok || pat == port }) {
			return serialproto.NewError(serialproto.CodeForbidden, "serial port not allowed")
		}
	}
	if pol.OnlyListed {
		_, listed := pol.Devices[deviceID]
		_, keyed := d.conf().Keys[deviceID]
		if !listed && !keyed {
			return serialproto.NewError(serialproto.CodeForbidden, "device not allowed")
		}
	}
	return nil
}

// allowModel refuses an INFER naming a model its device's rule does not
// allow; the refusal is counted.
func (s *session) allowModel(m *serialproto.Infer) *serialproto.Error {
	rule, ok := s.d.conf().Policy.Devices[s.deviceID]
	if !ok || m.Model == "" || len(rule.Models) == 0 || slices.Contains(rule.Models, m.Model) {
		return nil
	}
	s.d.stats.Forbidden.Add(1)
	return serialproto.NewError(serialproto.CodeForbidden, "model not allowed for this device")
}

// sourceKey names a peer's source for the per-source limits: its IP
// address for a datagram peer, whatever its port (a host opening sockets
// on many ports is still one host), and the link itself for a byte stream
// (one serial port, one device).
func sourceKey(p Peer) string {
	if p.ByteStream() {
		return p.LinkName()
	}
	if a := p.Addr(); a.IsValid() {
		return a.Addr().Unmap().String()
	}
	return p.Key()
}

// peerLimiter is a token bucket per source (a UDP source address): a
// flooding source is cut off before its frames cost a session lookup, a
// decode of its body or an answer. It tracks at most max sources; beyond
// that an arbitrary one is forgotten (it starts again with a full bucket),
// so memory stays bounded whatever the number of sources.
type peerLimiter struct {
	rate  float64 // frames a second
	burst float64
	max   int

	mu    sync.Mutex
	peers map[limitKey]*bucket
}

// limitKey names a source in the limiter without building a string: the
// address of a datagram peer (any port), else the peer's key (an MQTT
// device behind its broker). The UDP link's gate looks a flood's source up
// once per datagram, before decoding it.
type limitKey struct {
	addr netip.Addr
	name string
}

// limitKeyOf is p's key in the limiter (the same source as sourceKey's).
func limitKeyOf(p Peer) limitKey {
	if a := p.Addr(); a.IsValid() && !p.ByteStream() {
		return limitKey{addr: a.Addr().Unmap()}
	}
	return limitKey{name: sourceKey(p)}
}

type bucket struct {
	tokens    float64
	last      time.Time
	lastReply time.Time // RATE_LIMITED answers: at most one a second
	credit    int       // bytes received and not yet answered (reflection bound)
}

// maxCredit bounds the bytes a source may have received and not been
// answered for: a few HELLO retries' worth.
const maxCredit = 4096

// received credits a source with n bytes it sent (a sound frame): the
// daemon's answers to a source without a session, which may be spoofed,
// never total more bytes than it sent (spend).
func (l *peerLimiter) received(key limitKey, n int) {
	if l.rate <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.peers[key]; b != nil {
		b.credit = min(b.credit+n, maxCredit)
	}
}

// credit is how many bytes key may be answered with now; -1: unbounded
// (the limiter is off).
func (l *peerLimiter) credit(key limitKey) int {
	if l.rate <= 0 {
		return -1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.peers[key]; b != nil {
		return b.credit
	}
	return 0
}

// spend takes n bytes of key's credit, or reports that there is not enough
// (the answer is not sent). With the limiter off nothing is tracked and
// everything may be sent.
func (l *peerLimiter) spend(key limitKey, n int) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.peers[key]
	if b == nil || b.credit < n {
		return false
	}
	b.credit -= n
	return true
}

// allow takes one frame's token; reply says whether to answer
// RATE_LIMITED for a refused frame.
func (l *peerLimiter) allow(key limitKey, now time.Time) (ok, reply bool) {
	if l.rate <= 0 {
		return true, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.peers[key]
	if b == nil {
		if l.peers == nil {
			l.peers = make(map[limitKey]*bucket)
		}
		if len(l.peers) >= l.max {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.peers[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, false
	}
	if now.Sub(b.lastReply) >= time.Second {
		b.lastReply = now
		return false, true
	}
	return false, false
}

// evict forgets the sources whose buckets have refilled (they look like
// new ones anyway), or one arbitrary source if none has. Called with mu held.
func (l *peerLimiter) evict(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.peers {
		if now.Sub(b.last) >= full {
			delete(l.peers, k)
		}
	}
	if len(l.peers) < l.max {
		return
	}
	for k := range l.peers {
		delete(l.peers, k)
		return
	}
}

// allowPeer applies the per-source rate limit to a datagram peer's frame;
// serial ports are bounded by their baud rate and are not limited. answer
// is false for datagrams that are not frames: their source may be spoofed,
// so nothing is ever sent back to it. A UDP datagram has been through the
// link's gate (admitDatagram), which took its token already.
func (d *Daemon) allowPeer(p Peer, seq uint8, answer bool, size int) bool {
	if p.ByteStream() {
		return true
	}
	key := limitKeyOf(p)
	if up, ok := p.(*udpPeer); ok && up.gated {
		if answer {
			d.limiter.received(key, size)
		}
		return true
	}
	ok, reply := d.limiter.allow(key, d.clock.Now())
	if ok && answer {
		d.limiter.received(key, size)
	}
	if !ok {
		d.stats.RateLimited.Add(1)
		if reply && answer {
			d.send(p, seq, serialproto.NewError(serialproto.CodeRateLimited, "too many frames"))
		}
	}
	return ok
}

// admitDatagram is the UDP link's gate (udp.go): the source's frame token
// is taken before the datagram is decoded, so a source over its rate costs
// one lookup here and nothing more — not counted as a frame or a bad
// frame, only as rate-limited. The once-a-second RATE_LIMITED answer
// decodes the datagram for its seq, and only a sound frame is answered.
func (d *Daemon) admitDatagram(l *UDPLink, from netip.AddrPort, datagram []byte) bool {
	ok, reply := d.limiter.allow(limitKey{addr: from.Addr().Unmap()}, d.clock.Now())
	if ok {
		return true
	}
	d.stats.RateLimited.Add(1)
	if reply {
		if f, err := serialproto.Decode(datagram); err == nil {
			d.send(&udpPeer{link: l, addr: from}, f.Seq, serialproto.NewError(serialproto.CodeRateLimited, "too many frames"))
		}
	}
	return false
}
