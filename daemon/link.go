package daemon

import (
	"context"
	"net/netip"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Link is one transport endpoint — a UDP socket or a serial port — in the
// spirit of gomavlib's endpoints: the dispatcher never knows which kind a
// session came from, only its Peer.
type Link interface {
	// Name identifies the link in logs and status ("udp:127.0.0.1:7700").
	Name() string
	// Run reads frames until ctx is done (then it returns nil) or the link
	// fails for good. It calls h from its own goroutine, one frame at a
	// time; Frame.Data is valid only during the call.
	Run(ctx context.Context, h Handler) error
	// Owns reports whether a session key (Peer.Key) belongs to a device on
	// this link, so that removing the link closes exactly its sessions.
	Owns(peerKey string) bool
}

// Handler receives what a link reads.
type Handler interface {
	HandleFrame(p Peer, f serialproto.Frame)
	// HandleBadFrame reports a rejected frame (bad CRC, bad length, a
	// datagram that is not exactly one frame).
	HandleBadFrame(p Peer, err error)
	// LinkStats reports a byte-stream link's decoder counters since its
	// last report: bytes skipped while resynchronising, and reconnects.
	LinkStats(link string, skipped int64, reconnects int)
}

// Peer is the far end of a link: a UDP address or the device on a serial
// port.
type Peer interface {
	// Key identifies the peer for sessions: link name plus address.
	Key() string
	// LinkName is the name of the link the peer came through (Link.Name):
	// the label of its metrics and what the policy's ports are matched
	// against.
	LinkName() string
	// Addr is a datagram peer's source address, which the policy's
	// networks are matched against; the zero AddrPort for a byte stream.
	Addr() netip.AddrPort
	// Send writes one encoded frame. Safe for concurrent use.
	Send(frame []byte) error
	// ByteStream is true for serial links: corrupt frames are answered with
	// NACK BAD_FRAME there (docs/protocol.md §7.1), never on UDP.
	ByteStream() bool
	// BoundDevice is the device id the link vouches for, which HELLO must
	// name (guard.go, admitPeer): on MQTT the id in the topic, whose
	// publisher the broker authenticated and its ACL let publish there.
	// Empty where the link knows no id (UDP, serial). A peer with a bound
	// device is proven (Daemon.unproven): no reflection bound applies.
	BoundDevice() string
	// RTO is the initial retransmission timeout towards this peer, whose
	// device announced window in its HELLO: fixed on UDP (§7.2); on a
	// serial line 2 × window × T(263) + 100 ms (§7.1), the time the device's
	// window of full frames takes on the wire, both ways, and some slack.
	RTO(window int) time.Duration
}
