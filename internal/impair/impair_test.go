package impair

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/mcpd-project/mcpd/clients/device"
	"golang.org/x/sys/unix"
)

// echoServer answers every datagram with itself, on loopback.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func startProxy(t *testing.T, cfg UDPConfig) *UDPProxy {
	t.Helper()
	p, err := NewUDPProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return p
}

// roundTrip sends n numbered datagrams through the proxy to an echo
// server, one every gap, and returns the numbers that came back, in
// arrival order.
func roundTrip(t *testing.T, p *UDPProxy, n int, gap time.Duration) []uint32 {
	t.Helper()
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make(chan []uint32, 1)
	go func() {
		var seen []uint32
		buf := make([]byte, 64)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			k, err := conn.Read(buf)
			if err != nil {
				got <- seen
				return
			}
			if k == 4 {
				seen = append(seen, binary.BigEndian.Uint32(buf))
			}
		}
	}()
	for i := range n {
		if _, err := conn.Write(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			t.Fatal(err)
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	return <-got
}

func TestProxyFaults(t *testing.T) {
	for _, tc := range []struct {
		name             string
		up               Faults
		wantLoss, wantDu bool
		wantReorder      bool
	}{
		{"clean", Faults{}, false, false, false},
		{"loss", Faults{Loss: 0.2}, true, false, false},
		{"duplication", Faults{Duplicate: 0.2}, false, true, false},
		{"reordering", Faults{Reorder: 0.2}, false, false, true},
		{"delay", Faults{Delay: 2 * time.Millisecond}, false, false, false},
		{"all", Faults{Loss: 0.1, Duplicate: 0.05, Reorder: 0.1, Jitter: time.Millisecond}, true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, UDPConfig{Target: echoServer(t), Up: tc.up, Seed: 7})
			const n = 400
			// A gap between datagrams keeps the loopback's own queues from
			// dropping anything: every loss here is the proxy's.
			got := roundTrip(t, p, n, 200*time.Microsecond)
			st := p.Stats()
			if st.Up.In != n {
				t.Fatalf("proxy saw %d of %d datagrams", st.Up.In, n)
			}
			count := map[uint32]int{}
			inversions := 0
			for i, v := range got {
				count[v]++
				if i > 0 && v < got[i-1] {
					inversions++
				}
			}
			missing, dups := 0, 0
			for i := range uint32(n) {
				switch c := count[i]; {
				case c == 0:
					missing++
				case c > 1:
					dups += c - 1
				}
			}
			t.Logf("%s: %+v; received %d, missing %d, duplicated %d, out of order %d", tc.name, st.Up, len(got), missing, dups, inversions)
			if int64(missing) != st.Up.Dropped || int64(dups) != st.Up.Duplicated {
				t.Fatalf("the echo saw %d missing and %d duplicates, the proxy counted %d and %d", missing, dups, st.Up.Dropped, st.Up.Duplicated)
			}
			if (missing > 0) != tc.wantLoss || (dups > 0) != tc.wantDu || (inversions > 0) != tc.wantReorder {
				t.Fatalf("loss %d, duplicates %d, inversions %d: not what %+v asks for", missing, dups, inversions, tc.up)
			}
			// Each rate within a generous band around its setting (n = 400).
			for _, c := range []struct {
				what string
				got  int64
				p    float64
			}{{"loss", st.Up.Dropped, tc.up.Loss}, {"duplication", st.Up.Duplicated, tc.up.Duplicate}} {
				if want := c.p * n; float64(c.got) < want/2.5 || float64(c.got) > want*2.5 {
					t.Errorf("%s: %d of %d, expected about %.0f", c.what, c.got, n, want)
				}
			}
		})
	}
}

// TestProxySeeded: the same seed drops the same datagrams.
func TestProxySeeded(t *testing.T) {
	echo := echoServer(t)
	run := func(seed uint64) []uint32 {
		p := startProxy(t, UDPConfig{Target: echo, Up: Faults{Loss: 0.3}, Seed: seed})
		return roundTrip(t, p, 200, 200*time.Microsecond)
	}
	a, b, c := run(1), run(1), run(2)
	if !slicesEqual(a, b) {
		t.Fatalf("seed 1 twice: %d and %d datagrams, different ones", len(a), len(b))
	}
	if slicesEqual(a, c) {
		t.Fatal("seeds 1 and 2 dropped the same datagrams")
	}
}

// TestProxyReplaysLate: with Replay, a share of the datagrams arrives once
// more, ReplayAfter to ReplayAfter+ReplayJitter after the original — here
// after every original — and the other faults make the same decisions as
// without it (the replays draw from their own random stream).
func TestProxyReplaysLate(t *testing.T) {
	echo := echoServer(t)
	run := func(f Faults) ([]uint32, DirStats) {
		p := startProxy(t, UDPConfig{Target: echo, Up: f, Seed: 3})
		got := roundTrip(t, p, 100, 200*time.Microsecond)
		return got, p.Stats().Up
	}
	plain, _ := run(Faults{Loss: 0.2})
	got, st := run(Faults{Loss: 0.2, Replay: 0.2, ReplayAfter: 250 * time.Millisecond, ReplayJitter: 50 * time.Millisecond})
	if st.Replayed < 5 || st.Replayed > 45 {
		t.Fatalf("%d of 100 replayed, expected about 20", st.Replayed)
	}
	originals := len(got) - int(st.Replayed)
	if originals < 0 || !slicesEqual(got[:originals], plain) {
		t.Fatalf("with replays the originals differ: %d of them, %d without replays", originals, len(plain))
	}
	for _, v := range got[originals:] {
		if v >= 100 {
			t.Fatalf("replayed %d, never sent", v)
		}
	}
}

func slicesEqual(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestProxyPerClientSource: each client reaches the target from its own
// source address, so the target tells them apart.
func TestProxyPerClientSource(t *testing.T) {
	target, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	p := startProxy(t, UDPConfig{Target: target.LocalAddr().(*net.UDPAddr).AddrPort()})
	sources := map[netip.AddrPort]bool{}
	for range 3 {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("hi"))
		_ = target.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 16)
		_, from, err := target.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		sources[from] = true
	}
	if len(sources) != 3 {
		t.Fatalf("3 clients arrived from %d sources", len(sources))
	}
}

func TestProxyRefusesNonLoopback(t *testing.T) {
	for _, cfg := range []UDPConfig{
		{Target: netip.MustParseAddrPort("192.0.2.1:7700")},
		{Target: netip.MustParseAddrPort("127.0.0.1:7700"), Listen: netip.MustParseAddrPort("0.0.0.0:0")},
		{Target: netip.MustParseAddrPort("127.0.0.1:7700"), Up: Faults{Loss: 1.5}},
	} {
		if _, err := NewUDPProxy(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// ptyPair opens a pseudo-terminal in raw mode; the test writes to and reads
// from the terminal side, the shim uses the master.
func ptyPair(t testing.TB) (master, tty *os.File) {
	t.Helper()
	pm, s, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	// A non-blocking duplicate of the master joins Go's poller, so Close
	// and deadlines interrupt a read blocked on it.
	fd, err := unix.Dup(int(pm.Fd()))
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		t.Fatal(err)
	}
	pm.Close()
	m := os.NewFile(uintptr(fd), "ptmx")
	if err := device.MakeRaw(s); err != nil {
		t.Fatal(err)
	}
	// Opened again by name, the terminal joins Go's poller, so reads honour
	// deadlines (pty.Open's file blocks in read(2) for good). The first
	// handle stays open: without it the master would see a hangup.
	tty, err = os.OpenFile(s.Name(), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); tty.Close(); s.Close() })
	return m, tty
}

// lineTransfer sends payload from one end of a shimmed line and returns
// what reached the other end once nothing more arrives.
func lineTransfer(t testing.TB, cfg LineConfig, payload []byte) ([]byte, *Line, time.Duration) {
	t.Helper()
	am, at := ptyPair(t)
	bm, bt := ptyPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := StartLine(ctx, am, bm, cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	start := time.Now()
	var took time.Duration
	go func() {
		var all []byte
		buf := make([]byte, 512)
		for {
			_ = bt.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, err := bt.Read(buf)
			all = append(all, buf[:n]...)
			if n > 0 {
				took = time.Since(start)
			}
			if err != nil {
				got <- all
				return
			}
		}
	}()
	if _, err := at.Write(payload); err != nil {
		t.Fatal(err)
	}
	return <-got, l, took
}

func TestLineClean(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 72) // 1152 bytes
	got, l, took := lineTransfer(t, LineConfig{Baud: 115200}, payload)
	if !bytes.Equal(got, payload) {
		t.Fatalf("clean line: %d bytes arrived of %d, or different", len(got), len(payload))
	}
	// 1152 bytes at 11,520 B/s take at least 100 ms; only the lower bound is
	// a property of the shim (the upper one would be the machine's speed).
	if took < 95*time.Millisecond {
		t.Fatalf("1152 bytes at 115200 baud arrived in %v: not paced", took)
	}
	ab, _ := l.Stats()
	if ab.Bytes != int64(len(payload)) || ab.FlippedBits != 0 || ab.DroppedBytes != 0 {
		t.Fatalf("stats %+v", ab)
	}
}

func TestLineNoise(t *testing.T) {
	payload := bytes.Repeat([]byte{0x55, 0xAA, 0x00, 0xFF}, 1024)
	t.Run("bit flips", func(t *testing.T) {
		got, l, _ := lineTransfer(t, LineConfig{BitErrorRate: 1e-2, Seed: 3}, payload)
		if len(got) != len(payload) {
			t.Fatalf("%d bytes of %d", len(got), len(payload))
		}
		flipped := 0
		for i := range got {
			flipped += bits.OnesCount8(got[i] ^ payload[i])
		}
		ab, _ := l.Stats()
		t.Logf("%d bits flipped of %d (BER 1e-2)", flipped, 8*len(payload))
		if int64(flipped) != ab.FlippedBits || flipped < 160 || flipped > 500 {
			t.Fatalf("%d bits differ, the shim counted %d; expected about 328", flipped, ab.FlippedBits)
		}
	})
	t.Run("drops", func(t *testing.T) {
		got, l, _ := lineTransfer(t, LineConfig{DropRate: 1e-2, Seed: 3}, payload)
		ab, _ := l.Stats()
		if int64(len(payload)-len(got)) != ab.DroppedBytes || ab.DroppedBytes < 15 || ab.DroppedBytes > 90 {
			t.Fatalf("%d bytes arrived of %d, the shim dropped %d; expected about 41 dropped", len(got), len(payload), ab.DroppedBytes)
		}
	})
	t.Run("seeded", func(t *testing.T) {
		a, _, _ := lineTransfer(t, LineConfig{BitErrorRate: 1e-2, Seed: 9}, payload)
		b, _, _ := lineTransfer(t, LineConfig{BitErrorRate: 1e-2, Seed: 9}, payload)
		if !bytes.Equal(a, b) {
			t.Fatal("the same seed corrupted different bits")
		}
	})
}

// TestLineStops: the line stops when one end is unplugged (its pty
// closed) and when its context ends, with no byte in flight.
func TestLineStops(t *testing.T) {
	am, _ := ptyPair(t)
	bm, _ := ptyPair(t)
	l, err := StartLine(context.Background(), am, bm, LineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	am.Close()
	waitLine(t, l)
	cm, _ := ptyPair(t)
	dm, _ := ptyPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	if l, err = StartLine(ctx, cm, dm, LineConfig{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	waitLine(t, l)
}

func waitLine(t *testing.T, l *Line) {
	t.Helper()
	done := make(chan struct{})
	go func() { l.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the line did not stop after both ends closed")
	}
}

// BenchmarkLinePacing reports how close the shim comes to the line rate it
// claims (11,520 B/s at 115,200 baud): the ratio of bytes a second moved
// through it to that rate, which must stay at or just below 1.
func BenchmarkLinePacing(b *testing.B) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 144) // 2304 bytes: 0.2 s
	var moved int
	var took time.Duration
	for b.Loop() {
		got, _, d := lineTransfer(b, LineConfig{Baud: 115200}, payload)
		moved += len(got)
		took += d
	}
	b.ReportMetric(float64(moved)/took.Seconds()/11520, "line-rate-ratio")
}
