package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// UDPLink serves devices on one UDP socket: one frame per datagram
// (docs/protocol.md §7.2).
type UDPLink struct {
	conn *net.UDPConn
	name string
	rto  time.Duration
	// batch is how many datagrams one read may return (recvmmsg on Linux,
	// udp_linux.go; one elsewhere); 1 reads one datagram per system call,
	// as before batching (kept for the benchmarks' comparison).
	batch int
	// rcvbuf is the socket's receive buffer as the kernel reports it
	// (twice what was granted: it counts its bookkeeping); 0: unknown.
	rcvbuf int
}

// UDPReceiveBuffer is the receive buffer ListenUDP asks for. A flood that
// outruns the reader for a moment (the reader was not scheduled) fills
// the socket's queue, and the kernel then drops every sender's datagrams
// alike, before any per-source limit can tell them apart
// (docs/reliability.md): the larger the queue, the longer the reader may
// be away. Linux grants at most net.core.rmem_max (212,992 bytes on a stock
// kernel) without CAP_NET_ADMIN; the socket unit's ReceiveBuffer= is set
// by systemd, which holds that capability.
const UDPReceiveBuffer = 4 << 20

// udpBatch is how many datagrams one read takes at most by default.
const udpBatch = 64

// ListenUDP opens a UDP link on addr ("127.0.0.1:7700") with a receive
// buffer of UDPReceiveBuffer, or as much of it as the kernel grants.
func ListenUDP(addr string) (*UDPLink, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("daemon: udp listen address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	l := NewUDPLink(conn)
	l.rcvbuf = growReceiveBuffer(conn, UDPReceiveBuffer)
	return l, nil
}

// NewUDPLink serves on an open socket, such as one inherited through
// systemd socket activation, whose receive buffer is the socket unit's
// (ReceiveBuffer=) and is left as it is. The link owns conn from now on.
func NewUDPLink(conn *net.UDPConn) *UDPLink {
	return &UDPLink{conn: conn, name: "udp:" + conn.LocalAddr().String(), rto: 250 * time.Millisecond,
		batch: udpBatch, rcvbuf: receiveBuffer(conn)}
}

func (l *UDPLink) Name() string { return l.name }

// Addr is the socket's local address.
func (l *UDPLink) Addr() netip.AddrPort { return l.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// SetReadBatch sets how many datagrams one read may return (default 64;
// one on platforms without recvmmsg). 1 reads one datagram per system
// call, as the link did before batching: for comparisons. Call it before
// Run.
func (l *UDPLink) SetReadBatch(n int) { l.batch = max(n, 1) }

// ReceiveBuffer is the socket's receive buffer in bytes as the kernel
// reports it (on Linux twice the granted SO_RCVBUF: the kernel counts its
// bookkeeping in it); 0 where it is not known.
func (l *UDPLink) ReceiveBuffer() int { return l.rcvbuf }

// datagrams is one read's worth of datagrams, in buffers reused from read
// to read: nothing is allocated per datagram.
type datagrams struct {
	bufs  [][]byte // each serialproto.MaxFrameLen+1 bytes, one backing array
	sizes []int
	froms []netip.AddrPort
}

func newDatagrams(n int) *datagrams {
	// One byte more than the longest frame exposes an oversize datagram
	// (the kernel truncates it to the buffer, and Decode refuses it).
	const size = serialproto.MaxFrameLen + 1
	back := make([]byte, n*size)
	d := &datagrams{bufs: make([][]byte, n), sizes: make([]int, n), froms: make([]netip.AddrPort, n)}
	for i := range d.bufs {
		d.bufs[i] = back[i*size : (i+1)*size : (i+1)*size]
	}
	return d
}

// datagramReader fills dg with at least one datagram, blocking until one
// comes, and returns how many it read.
type datagramReader interface {
	read(dg *datagrams) (int, error)
}

// singleReader reads one datagram per system call: the portable way, and
// the one batching is compared against.
type singleReader struct{ conn *net.UDPConn }

func (r singleReader) read(dg *datagrams) (int, error) {
	n, from, err := r.conn.ReadFromUDPAddrPort(dg.bufs[0])
	if err != nil {
		return 0, err
	}
	dg.sizes[0], dg.froms[0] = n, from
	return 1, nil
}

// datagramGate is what a Handler may add to see a datagram's source before
// the link decodes it: the Daemon's per-source rate limit (guard.go). A
// flood's excess then costs the read and one table lookup, not a CRC, a
// frame and a handler call.
type datagramGate interface {
	// admitDatagram takes one of from's frame tokens and reports whether
	// the datagram may go on; false: it is dropped, already counted and,
	// where due, answered.
	admitDatagram(l *UDPLink, from netip.AddrPort, datagram []byte) bool
}

// Run reads datagrams until ctx is done, then closes the socket.
func (l *UDPLink) Run(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { l.conn.Close() })
	defer stop()
	n := max(l.batch, 1)
	var r datagramReader = singleReader{l.conn}
	if n > 1 {
		br, err := newBatchReader(l.conn, n)
		if err != nil {
			return fmt.Errorf("daemon: %s: %w", l.name, err)
		}
		r = br
	}
	dg := newDatagrams(n)
	gate, _ := h.(datagramGate)
	for {
		got, err := r.read(dg)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue // e.g. ICMP port unreachable reported on the socket
		}
		for i := range got {
			l.deliver(h, gate, dg.froms[i], dg.bufs[i][:dg.sizes[i]])
		}
	}
}

// deliver hands one datagram to h: past the gate, decoded.
func (l *UDPLink) deliver(h Handler, gate datagramGate, from netip.AddrPort, datagram []byte) {
	if gate != nil && !gate.admitDatagram(l, from, datagram) {
		return
	}
	p := &udpPeer{link: l, addr: from, gated: gate != nil}
	f, err := serialproto.Decode(datagram)
	if err != nil {
		h.HandleBadFrame(p, err)
		return
	}
	h.HandleFrame(p, f)
}

type udpPeer struct {
	link *UDPLink
	addr netip.AddrPort
	// gated: the datagram this peer came with has passed the link's gate,
	// which took its rate-limit token (allowPeer does not take another).
	gated bool
}

func (p *udpPeer) Key() string           { return p.link.name + "|" + p.addr.String() }
func (p *udpPeer) LinkName() string      { return p.link.name }
func (p *udpPeer) Addr() netip.AddrPort  { return p.addr }
func (p *udpPeer) ByteStream() bool      { return false }
func (p *udpPeer) BoundDevice() string   { return "" }
func (p *udpPeer) RTO(int) time.Duration { return p.link.rto }
func (p *udpPeer) Send(frame []byte) error {
	_, err := p.link.conn.WriteToUDPAddrPort(frame, p.addr)
	return err
}
