package daemon

import (
	"crypto/rand"
	"encoding/binary"
	"log/slog"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Frame intake: what the links hand the daemon (Handler), before a frame
// reaches its session — the per-source rate limit, version and command
// checks, HELLO (authentication, policy, the session table) and the
// answers to peers without a session.

// HandleBadFrame counts a rejected frame; on a serial line the sender
// learns of it through NACK BAD_FRAME (docs/protocol.md §7.1).
func (d *Daemon) HandleBadFrame(p Peer, err error) {
	d.stats.badFrame(p.LinkName(), err)
	if !d.allowPeer(p, 0, false, 0) {
		return
	}
	if !p.ByteStream() {
		return
	}
	s := d.sessions.get(p.Key())
	if s != nil {
		// A port has one device, and this frame can only be its own: the
		// device is talking, the line corrupts it. On a noisy line a
		// device retrying a long INFER can go several heartbeats without a
		// frame that passes its CRC (at BER 1e-3 four in five 193-byte
		// frames fail); expiring the session then (§10) would answer its
		// first good frame NO_SESSION. Not on UDP, where the source of a
		// bad datagram may be spoofed.
		s.touch()
	}
	if s != nil && !s.allowNack(d.clock.Now()) {
		return
	}
	d.send(p, 0, &serialproto.Nack{Reason: serialproto.NackBadFrame})
}

// HandleFrame is the entry point of every sound frame.
func (d *Daemon) HandleFrame(p Peer, f serialproto.Frame) {
	d.stats.frame(p.LinkName(), FrameIn, f.Cmd)
	if !d.allowPeer(p, f.Seq, true, serialproto.Overhead+len(f.Data)) {
		return
	}
	switch {
	case f.Version != serialproto.Version1:
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeUnsupportedVersion, "versions 1..1"))
		return
	case !f.Cmd.Known():
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeUnknownCommand, f.Cmd.String()))
		return
	case !f.Cmd.Travels(serialproto.DeviceToDaemon):
		// Judged by the command alone, like an unknown one: the body of a
		// frame sent the wrong way is never parsed, so it is UNEXPECTED
		// whatever it holds, session or not (§4).
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeUnexpected, f.Cmd.String()+" is sent by the daemon"))
		return
	case f.Cmd == serialproto.CmdHello:
		d.hello(p, f)
		return
	}
	s := d.sessions.get(p.Key())
	if s == nil {
		if f.Cmd == serialproto.CmdBye {
			d.send(p, f.Seq, &serialproto.Bye{})
		} else {
			d.send(p, f.Seq, serialproto.NewError(serialproto.CodeNoSession, "send HELLO first"))
		}
		return
	}
	s.handle(f)
}

// LinkStats counts a byte-stream link's decoder counters.
func (d *Daemon) LinkStats(link string, skipped int64, reconnects int) {
	d.stats.linkStats(link, skipped, reconnects)
}

// hello opens, repeats or replaces a session (docs/protocol.md §10): the
// HELLO must parse, authenticate (§9.4, auth.go), ask for a version we
// speak and pass the policy; then the session table decides.
func (d *Daemon) hello(p Peer, f serialproto.Frame) {
	h, key, refused := d.authHello(f)
	if refused != nil {
		d.send(p, f.Seq, refused)
		return
	}
	if h.MinVersion > serialproto.Version1 {
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeUnsupportedVersion, "versions 1..1"))
		return
	}
	if e := d.admitPeer(p, h.DeviceID); e != nil {
		d.stats.Forbidden.Add(1)
		d.stats.refused(p.LinkName(), e.Code)
		d.remoteLog(slog.LevelInfo, "HELLO refused by policy", "device", h.DeviceID, "peer", p.Key(), "reason", e.Text)
		d.send(p, f.Seq, e)
		return
	}
	cfg := d.conf()
	res := d.sessions.hello(helloRequest{
		peerKey: p.Key(), deviceID: h.DeviceID, bootNonce: h.BootNonce, keyed: !key.IsZero(), source: sourceKey(p),
		maxSessions: cfg.MaxSessions, maxSource: max(cfg.MaxSessionsPerSource, 0), maxDevice: max(cfg.MaxSessionsPerDevice, 0), heartbeat: cfg.Heartbeat, now: d.clock.Now(),
		draining: d.admission.isDraining,
		create: func() (*session, error) {
			return newSession(d, d.links.context(), p, h, f.Seq, randomNonce(), key)
		},
	})
	if res.evicted != nil {
		res.evicted.cancel(errSessionClosed)
		res.evicted.park()
	}
	switch res.outcome {
	case helloOpened:
		res.session.resume(h.Features&serialproto.FeatureResume != 0, res.old)
		if res.old != nil {
			res.old.close(errSessionClosed)
		}
		d.remoteLog(slog.LevelInfo, "session opened", "device", h.DeviceID, "peer", p.Key(), "max_data", h.MaxData, "window", h.Window, "signed", !key.IsZero())
		d.sendTo(p, f.Seq, res.session.maxData, res.session.seal, res.session.welcome(), true)
	case helloRepeated:
		d.stats.Duplicates.Add(1)
		res.session.touch()
		d.sendTo(p, f.Seq, res.session.maxData, res.session.seal, res.session.welcome(), true)
	default:
		if res.outcome == helloReplayed {
			d.countAuth(serialproto.ErrReplay)
		}
		e := helloRefusal(res)
		if res.outcome == helloFull || res.outcome == helloSourceFull || res.outcome == helloDeviceFull {
			d.stats.refused(p.LinkName(), serialproto.CodeBusy)
			d.remoteLog(slog.LevelInfo, "HELLO refused", "device", h.DeviceID, "peer", p.Key(), "code", e.Code.String(), "reason", e.Text)
		}
		d.send(p, f.Seq, e)
	}
}

// send answers a peer that has no session (yet): its data limit is
// unknown, so the smallest one any device may have is assumed, and there is
// no session to sign in (§9.2). Its source address may be spoofed, so the
// answers never total more bytes than it sent (bounded).
func (d *Daemon) send(p Peer, seq uint8, m serialproto.Message) {
	d.sendTo(p, seq, serialproto.MinDataLimit, nil, m, true)
}

// sendTo encodes m in one frame to p, cutting texts to fit the peer's data
// limit. Errors are logged, not returned: a device that vanished is
// handled by session expiry. bounded: an answer to a source not yet known
// to be where it says (a sessionless frame, a HELLO): on a datagram link
// it goes out only within the bytes the source sent (peerLimiter.spend),
// so a spoofed source cannot make the daemon reflect more than it gets.
func (d *Daemon) sendTo(p Peer, seq uint8, limit int, seal *sealer, m serialproto.Message, bounded bool) {
	bounded = bounded && d.unproven(p)
	if bounded {
		// Texts are cut to what the source may still be answered with.
		if c := d.limiter.credit(limitKeyOf(p)); c >= 0 {
			over := serialproto.Overhead
			if seal.signed() {
				over += serialproto.SignatureLen
			}
			limit = max(min(limit, c-over), 4)
		}
	}
	switch m := m.(type) {
	case *serialproto.Error:
		m.Fit(serialproto.BodyLimit(limit, seal.signed()))
	case *serialproto.StatusReply:
		m.Fit(serialproto.BodyLimit(limit, seal.signed()))
	}
	body, err := m.AppendBody(make([]byte, 0, 64))
	if err != nil {
		d.log.Error("encoding a reply", "cmd", m.Command(), "err", err)
		return
	}
	frame, err := seal.seal(serialproto.Frame{Version: serialproto.Version1, Cmd: m.Command(), Seq: seq, Data: body})
	if err != nil {
		d.log.Error("encoding a reply", "cmd", m.Command(), "err", err)
		return
	}
	if bounded && !d.limiter.spend(limitKeyOf(p), len(frame)) {
		d.stats.Unanswered.Add(1)
		return
	}
	if err := p.Send(frame); err != nil {
		d.log.Debug("send failed", "peer", p.Key(), "err", err)
		return
	}
	d.stats.frame(p.LinkName(), FrameOut, m.Command())
}

// unproven reports whether p's source address could be spoofed: a datagram
// peer off loopback (the kernel drops packets from the network that claim
// a loopback source), unless the configuration bounds loopback too. A peer
// its link vouches for (BoundDevice: on MQTT the broker authenticated the
// publisher) is proven: the answers go to that device's own down topic,
// which only its account reads, never to an address a spoofer chose. Taken
// for unproven (it has no source address), its first answer stream spent
// the bytes it sent: the first chunks waited for the device's repeated
// ACKs, and a session's first request took about 1 s (§7.4).
func (d *Daemon) unproven(p Peer) bool {
	if p.ByteStream() || p.BoundDevice() != "" {
		return false
	}
	a := p.Addr()
	return !a.IsValid() || !a.Addr().Unmap().IsLoopback() || d.conf().BoundLoopbackReplies
}

func randomNonce() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
	return binary.BigEndian.Uint32(b[:])
}
