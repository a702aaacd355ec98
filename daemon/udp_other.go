//go:build !linux

package daemon

import "net"

// Elsewhere than Linux datagrams are read one per system call (no
// recvmmsg); golang.org/x/net's ReadBatch does the same there.
func newBatchReader(conn *net.UDPConn, _ int) (datagramReader, error) {
	return singleReader{conn}, nil
}

// growReceiveBuffer asks for want bytes of receive buffer; what was
// granted is not known here (0).
func growReceiveBuffer(conn *net.UDPConn, want int) int {
	_ = conn.SetReadBuffer(want)
	return 0
}

func receiveBuffer(*net.UDPConn) int { return 0 }
