package daemon

import (
	"net"
	"testing"

	"github.com/mcpd-project/mcpd/serialproto"
)

// BenchmarkUDPIntake is the daemon's cost per datagram of a flood from a
// source over its rate: the read (one datagram per system call, or a
// batch of 64 with recvmmsg) and its drop, with the gate before decoding
// or, as before it, decoding first. Each round queues up to 4,000
// datagrams at the socket untimed (the sender's cost is the attacker's),
// then times draining them. ns/op is per datagram: a reader keeps up with
// a flood of 10⁹/(ns/op) datagrams a second while it has a core.
func BenchmarkUDPIntake(b *testing.B) {
	raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdError, Data: []byte{byte(serialproto.CodeInternal), 'o', 'o', 'p', 's'}})
	for _, bc := range []struct {
		name  string
		batch int
		gate  bool
	}{
		{"one per read, decode first", 1, false},
		{"one per read, gate first", 1, true},
		{"batch 64, decode first", udpBatch, false},
		{"batch 64, gate first", udpBatch, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d, err := newDaemon(Config{PeerRate: 1, PeerBurst: 1}, &testEngine{}, nil, newFakeClock()) // the clock stands still: one token in all
			if err != nil {
				b.Fatal(err)
			}
			l, err := ListenUDP("127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(l.Addr()))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var r datagramReader = singleReader{l.conn}
			if bc.batch > 1 {
				if r, err = newBatchReader(l.conn, bc.batch); err != nil {
					b.Fatal(err)
				}
			}
			dg := newDatagrams(bc.batch)
			var h Handler = struct{ Handler }{d} // hides the gate: decode first, as before it
			var gate datagramGate
			if bc.gate {
				h, gate = d, d
			}
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				b.StopTimer()
				k := min(4000, b.N-done)
				for range k {
					if _, err := c.Write(raw); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				for got := 0; got < k; {
					n, err := r.read(dg)
					if err != nil {
						b.Fatal(err)
					}
					for i := range n {
						l.deliver(h, gate, dg.froms[i], dg.bufs[i][:dg.sizes[i]])
					}
					got += n
				}
				done += k
			}
			b.StopTimer()
			if lim := d.Stats().RateLimited.Load(); lim < int64(b.N)-1 {
				b.Fatalf("rate-limited %d of %d", lim, b.N)
			}
		})
	}
}
