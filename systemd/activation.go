package systemd

import (
	"errors"
	"fmt"
	"net"

	"github.com/coreos/go-systemd/v22/activation"
)

// UDPSockets returns the UDP sockets systemd passed to this process by
// socket activation (mcpd.socket's ListenDatagram=), in order; none when
// the process was not socket-activated. It takes them over: the LISTEN_*
// variables are cleared, so they are taken once. A passed socket that is
// not a UDP socket (a ListenStream= line by mistake) is an error, and all
// passed sockets are closed then.
func UDPSockets() ([]*net.UDPConn, error) {
	conns, err := activation.PacketConns()
	if err != nil {
		return nil, fmt.Errorf("systemd: socket activation: %w", err)
	}
	var udp []*net.UDPConn
	var errs []error
	for i, c := range conns {
		switch c := c.(type) {
		case *net.UDPConn:
			udp = append(udp, c)
		case nil:
			errs = append(errs, fmt.Errorf("systemd: passed socket %d is not a datagram socket (use ListenDatagram=)", i))
		default:
			c.Close()
			errs = append(errs, fmt.Errorf("systemd: passed socket %d is %s, not UDP", i, c.LocalAddr().Network()))
		}
	}
	if err := errors.Join(errs...); err != nil {
		for _, c := range udp {
			c.Close()
		}
		return nil, err
	}
	return udp, nil
}
