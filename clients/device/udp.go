package device

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// UDP is a Transport over a connected UDP socket.
type UDP struct {
	conn *net.UDPConn
	buf  [serialproto.MaxFrameLen + 1]byte
}

// DialUDP connects to the daemon at addr ("127.0.0.1:7700").
func DialUDP(addr string) (*UDP, error) { return DialUDPFrom("", addr) }

// DialUDPFrom is DialUDP from the local address local ("127.0.0.2:0"; ""
// lets the system choose): a gateway with several addresses, or a test
// that needs devices on distinct hosts (the daemon's limits are per source
// address).
func DialUDPFrom(local, addr string) (*UDP, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	var la *net.UDPAddr
	if local != "" {
		if la, err = net.ResolveUDPAddr("udp", local); err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
	}
	conn, err := net.DialUDP("udp", la, ua)
	if err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	return &UDP{conn: conn}, nil
}

// Send writes one encoded frame as one datagram.
func (u *UDP) Send(frame []byte) error {
	_, err := u.conn.Write(frame)
	return err
}

// Recv returns the next datagram that is one sound frame before deadline;
// others are skipped, as a device must.
func (u *UDP) Recv(deadline time.Time) (serialproto.Frame, error) {
	if err := u.conn.SetReadDeadline(deadline); err != nil {
		return serialproto.Frame{}, err
	}
	for {
		n, err := u.conn.Read(u.buf[:])
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && !ne.Timeout() && !errors.Is(err, net.ErrClosed) {
				continue // ICMP port unreachable while the daemon restarts; the deadline still ends the wait
			}
			return serialproto.Frame{}, err
		}
		if f, err := serialproto.Decode(u.buf[:n]); err == nil {
			return f, nil
		}
	}
}

// Close closes the socket.
func (u *UDP) Close() error { return u.conn.Close() }

// LocalAddr is the device's own address.
func (u *UDP) LocalAddr() net.Addr { return u.conn.LocalAddr() }
