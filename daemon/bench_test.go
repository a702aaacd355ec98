package daemon

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/internal/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// BenchmarkUDPEchoBaseline is a bare UDP echo on loopback — the floor any
// request/response over these sockets pays — measured in the same run as
// the daemon benchmarks so their figures can be read as ratios.
func BenchmarkUDPEchoBaseline(b *testing.B) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, addr, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDPAddrPort(buf[:n], addr)
		}
	}()
	c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 40)
	buf := make([]byte, 512)
	for b.Loop() {
		_, _ = c.Write(msg)
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDaemonPing: PING → PONG through the daemon's session path.
func BenchmarkDaemonPing(b *testing.B) {
	_, addr := startBenchDaemon(b, &testEngine{})
	c := benchClient(b, addr)
	for b.Loop() {
		if _, err := c.Ping(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDaemonRequest: a whole INFER with an instant engine — ACK, a
// TOKEN, DONE and the device's ACKs — the daemon's overhead per request.
func BenchmarkDaemonRequest(b *testing.B) {
	_, addr := startBenchDaemon(b, &testEngine{})
	c := benchClient(b, addr)
	m := &sp.Infer{Prompt: "hi"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Ask(context.Background(), m, func([]byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func startBenchDaemon(b *testing.B, e *testEngine) (*Daemon, string) {
	d, err := New(Config{}, e, nil)
	if err != nil {
		b.Fatal(err)
	}
	l, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, l); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return d, l.Addr().String()
}

func benchClient(b *testing.B, addr string) *device.Client {
	tr, err := device.DialUDP(addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	c := device.New(tr, device.Config{DeviceID: "bench"})
	if err := c.Hello(context.Background()); err != nil {
		b.Fatal(err)
	}
	return c
}
