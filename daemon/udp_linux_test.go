package daemon

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/serialproto"
)

// listenPair is a link's socket and a client connected to it.
func listenPair(t *testing.T) (*UDPLink, *net.UDPConn) {
	t.Helper()
	l, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(l.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return l, c
}

// TestBatchReadTakesWhatIsQueued: one read returns every datagram queued
// (up to the batch), not one per system call, and allocates nothing.
func TestBatchReadTakesWhatIsQueued(t *testing.T) {
	l, c := listenPair(t)
	r, err := newBatchReader(l.conn, udpBatch)
	if err != nil {
		t.Fatal(err)
	}
	dg := newDatagrams(udpBatch)
	send := func(n int) {
		for i := range n {
			raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Seq: uint8(i)})
			if _, err := c.Write(raw); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(10) // on loopback a sent datagram is queued at the socket when Write returns
	got, err := r.read(dg)
	if err != nil || got != 10 {
		t.Fatalf("read %d datagrams (%v), want the 10 queued", got, err)
	}
	for i := range got {
		f, err := serialproto.Decode(dg.bufs[i][:dg.sizes[i]])
		if err != nil || f.Seq != uint8(i) || dg.froms[i] != c.LocalAddr().(*net.UDPAddr).AddrPort() {
			t.Fatalf("datagram %d: %+v %v from %v", i, f, err, dg.froms[i])
		}
	}
	send(12 * udpBatch) // 11 full reads' worth, and some
	if allocs := testing.AllocsPerRun(10, func() {
		if n, err := r.read(dg); err != nil || n != udpBatch {
			t.Fatalf("read %d (%v), want a full batch", n, err)
		}
	}); allocs != 0 {
		t.Fatalf("%.1f allocations per batch read", allocs)
	}
}

// TestReceiveBuffer: ListenUDP's socket gets UDPReceiveBuffer, or as much
// of it as net.core.rmem_max allows without CAP_NET_ADMIN (the kernel
// reports twice what it grants).
func TestReceiveBuffer(t *testing.T) {
	l, _ := listenPair(t)
	b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Skip(err)
	}
	rmemMax, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * min(UDPReceiveBuffer, rmemMax); l.ReceiveBuffer() < want {
		t.Fatalf("receive buffer %d, want at least %d (rmem_max %d)", l.ReceiveBuffer(), want, rmemMax)
	}
	// A socket whose buffer is already larger (a socket unit's) keeps it.
	if got := growReceiveBuffer(l.conn, UDPReceiveBuffer/4); got != l.ReceiveBuffer() {
		t.Fatalf("asking for less changed the buffer: %d → %d", l.ReceiveBuffer(), got)
	}
}
