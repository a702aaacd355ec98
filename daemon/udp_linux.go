package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgReader reads up to len(hdrs) datagrams per system call with
// recvmmsg(2), into the datagrams' buffers and source addresses it was set
// up with once: nothing is allocated per read or per datagram.
// golang.org/x/net's ipv4.PacketConn.ReadBatch makes the same call but
// allocates a net.UDPAddr per datagram and its headers per call, which a
// flood of a few hundred thousand datagrams a second turns into work for
// the garbage collector on the same cores the reader needs.
type mmsgReader struct {
	rc    syscall.RawConn
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for an IPv4 source too
	bound *datagrams              // the buffers hdrs point into
	fn    func(fd uintptr) bool   // the call, made once: no closure per read
	n     int
	errno syscall.Errno
}

func newBatchReader(conn *net.UDPConn, n int) (datagramReader, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &mmsgReader{rc: rc, hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n), names: make([]unix.RawSockaddrInet6, n)}
	r.fn = func(fd uintptr) bool {
		for {
			got, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), 0, 0, 0)
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // nothing queued: wait until the socket is readable
			}
			r.n, r.errno = int(got), e
			return true
		}
	}
	return r, nil
}

// bind points the headers at dg's buffers (once: dg is the link's for its
// whole run).
func (r *mmsgReader) bind(dg *datagrams) {
	r.bound = dg
	for i := range r.hdrs {
		r.iovs[i].Base = &dg.bufs[i][0]
		r.iovs[i].SetLen(len(dg.bufs[i]))
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
	}
}

func (r *mmsgReader) read(dg *datagrams) (int, error) {
	if r.bound != dg {
		r.bind(dg)
	}
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6 // the kernel overwrites it
	}
	if err := r.rc.Read(r.fn); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, fmt.Errorf("recvmmsg: %w", r.errno)
	}
	for i := range r.n {
		dg.sizes[i] = int(r.hdrs[i].Len)
		dg.froms[i] = sockaddrAddrPort(&r.names[i])
	}
	return r.n, nil
}

// sockaddrAddrPort reads a source address the kernel wrote, as
// ReadFromUDPAddrPort would return it: an IPv4 source on an IPv6 socket
// stays IPv4-mapped; a link-local source keeps its zone (the interface's
// index: enough to send back to it).
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), netPort(sa4.Port))
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			a = a.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return netip.AddrPortFrom(a, netPort(sa.Port))
	}
	return netip.AddrPort{}
}

// netPort converts a port as the kernel stores it (network byte order) to
// a number.
func netPort(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// growReceiveBuffer asks for a receive buffer of want bytes as systemd
// does for a socket unit's ReceiveBuffer=: SO_RCVBUF first (the kernel caps
// it at net.core.rmem_max), then, if that fell short, SO_RCVBUFFORCE
// (beyond rmem_max; needs CAP_NET_ADMIN, which the shipped unit does not
// give, so there it fails and the capped size stays). A buffer already
// that large is kept. It returns what the kernel reports (twice the
// granted size), 0 if it cannot tell.
func growReceiveBuffer(conn *net.UDPConn, want int) int {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0
	}
	if have := receiveBuffer(conn); have >= 2*want {
		return have
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, want)
	})
	if have := receiveBuffer(conn); have >= 2*want {
		return have
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, want)
	})
	return receiveBuffer(conn)
}

// receiveBuffer is the socket's SO_RCVBUF as the kernel reports it.
func receiveBuffer(conn *net.UDPConn) int {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		n, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	return n
}
