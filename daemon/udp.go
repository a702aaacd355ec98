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
}

// ListenUDP opens a UDP link on addr ("127.0.0.1:7700").
func ListenUDP(addr string) (*UDPLink, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("daemon: udp listen address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	return NewUDPLink(conn), nil
}

// NewUDPLink serves on an open socket, such as one inherited through
// systemd socket activation. The link owns conn from now on.
func NewUDPLink(conn *net.UDPConn) *UDPLink {
	return &UDPLink{conn: conn, name: "udp:" + conn.LocalAddr().String(), rto: 250 * time.Millisecond}
}

func (l *UDPLink) Name() string { return l.name }

// Addr is the socket's local address.
func (l *UDPLink) Addr() netip.AddrPort { return l.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Run reads datagrams until ctx is done, then closes the socket.
func (l *UDPLink) Run(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { l.conn.Close() })
	defer stop()
	buf := make([]byte, serialproto.MaxFrameLen+1) // one byte more exposes oversize datagrams
	for {
		n, from, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue // e.g. ICMP port unreachable reported on the socket
		}
		p := &udpPeer{link: l, addr: from}
		f, err := serialproto.Decode(buf[:n])
		if err != nil {
			h.HandleBadFrame(p, err)
			continue
		}
		h.HandleFrame(p, f)
	}
}

type udpPeer struct {
	link *UDPLink
	addr netip.AddrPort
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
