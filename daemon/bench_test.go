package daemon

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// BenchmarkUDPEchoBaseline is a bare UDP echo on loopback — the floor any
// request/response over these sockets pays — measured in the same run as
// the daemon benchmarks so their figures can be read as ratios.
// startEcho runs a bare UDP echo server on loopback until the benchmark ends.
func startEcho(b *testing.B) *net.UDPAddr {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
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
	return srv.LocalAddr().(*net.UDPAddr)
}

func BenchmarkUDPEchoBaseline(b *testing.B) {
	c, err := net.DialUDP("udp", nil, startEcho(b))
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
	_, addr := startBenchDaemon(b, Config{}, &testEngine{})
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
	_, addr := startBenchDaemon(b, Config{}, &testEngine{})
	c := benchClient(b, addr)
	m := &serialproto.Infer{Prompt: "hi"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Ask(context.Background(), m, func([]byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func startBenchDaemon(b *testing.B, cfg Config, e *testEngine) (*Daemon, string) {
	if cfg.PeerRate == 0 {
		cfg.PeerRate = -1 // every benchmark device is on 127.0.0.1: measure the pipeline, not the limiter
	}
	d, err := New(cfg, e, nil)
	if err != nil {
		b.Fatal(err)
	}
	addr, _ := runDaemon(b, d)
	return d, addr
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

// dialEcho opens n client sockets to the echo server, closed when the
// benchmark ends.
func dialEcho(b *testing.B, echo *net.UDPAddr, n int) []*net.UDPConn {
	conns := make([]*net.UDPConn, n)
	for i := range conns {
		var err error
		if conns[i], err = net.DialUDP("udp", nil, echo); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conns[i].Close() })
	}
	return conns
}

// echoRoundTrip times one 40-byte datagram there and back.
func echoRoundTrip(c *net.UDPConn) (time.Duration, error) {
	buf := make([]byte, 64)
	t0 := time.Now()
	if _, err := c.Write(buf[:40]); err != nil {
		return 0, err
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := c.Read(buf)
	return time.Since(t0), err
}

// percentiles of durations, in microseconds.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	at := func(p int) float64 { return float64(d[min(len(d)-1, len(d)*p/100)].Microseconds()) }
	return at(50), at(99)
}

// loadDevices runs n concurrent workers, each timing op while more(worker)
// says so — more may also wait, to pace its worker — and returns every
// operation's latency.
func loadDevices(b *testing.B, n int, more func(worker int) bool, op func(worker int) (time.Duration, error)) []time.Duration {
	var (
		mu   sync.Mutex
		lats []time.Duration
		wg   sync.WaitGroup
	)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for more(w) {
				lat, err := op(w)
				if err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				lats = append(lats, lat)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return lats
}

// backToBack lets workers run until total operations are done.
func backToBack(total int) func(int) bool {
	left := int64(total)
	return func(int) bool { return atomic.AddInt64(&left, -1) >= 0 }
}

// Benchmark64Devices measures what the daemon adds at 64 concurrent
// devices: the time from sending an INFER to the first TOKEN frame, with
// an instant engine, against the round trip of a bare UDP echo under the
// same load, both in this run. Metrics: p50/p99 of each and their ratio.
func Benchmark64Devices(b *testing.B) {
	const devices = 64
	total := max(b.N, devices*20)

	// Baseline: 64 clients against a bare echo server.
	echoAddr := startEcho(b)
	conns := dialEcho(b, echoAddr, devices)
	echo := loadDevices(b, devices, backToBack(total), func(w int) (time.Duration, error) { return echoRoundTrip(conns[w]) })

	// The daemon: 64 devices, INFER → first TOKEN.
	_, addr := startBenchDaemon(b, Config{MaxQueue: devices}, &testEngine{})
	clients := make([]*device.Client, devices)
	for i := range clients {
		clients[i] = benchClient(b, addr)
	}
	m := &serialproto.Infer{Prompt: "hi"}
	b.ResetTimer()
	ttft := loadDevices(b, devices, backToBack(total), func(w int) (time.Duration, error) {
		t0 := time.Now()
		var first time.Duration
		_, err := clients[w].Ask(context.Background(), m, func([]byte) error {
			if first == 0 {
				first = time.Since(t0)
			}
			return nil
		})
		return first, err
	})
	b.StopTimer()
	e50, e99 := percentiles(echo)
	d50, d99 := percentiles(ttft)
	b.ReportMetric(e50, "echo-p50-µs")
	b.ReportMetric(e99, "echo-p99-µs")
	b.ReportMetric(d50, "ttft-p50-µs")
	b.ReportMetric(d99, "ttft-p99-µs")
	b.ReportMetric(d99/max(e99, 1), "p99-ratio")
	b.ReportMetric(0, "ns/op")
}

// Benchmark64DevicesPaced is Benchmark64Devices with each device asking at
// its own pace, as devices do, instead of back to back: 64 devices, each
// sending a request every interval (offset by a random phase) for a fixed
// number of rounds, against a bare echo paced the same way in the same
// run. Back to back, 64 clients in this process saturate both cores and
// the latency measures the queue (Little's law), not the daemon; paced
// below saturation, it measures what the daemon adds to one request while
// 63 other devices are active. Each interval is a sub-benchmark.
func Benchmark64DevicesPaced(b *testing.B) {
	for _, interval := range []time.Duration{50 * time.Millisecond, 20 * time.Millisecond, 10 * time.Millisecond} {
		b.Run(interval.String(), func(b *testing.B) { bench64Paced(b, interval) })
	}
}

func bench64Paced(b *testing.B, interval time.Duration) {
	const (
		devices = 64
		rounds  = 40 // per device: 2,560 requests, at most 40 intervals of wall time
	)
	// paced runs op on every device, each waiting for its next slot: the
	// start plus its phase plus its round's intervals.
	paced := func(op func(w int) (time.Duration, error)) []time.Duration {
		start := time.Now()
		round := make([]int, devices) // each index touched by its own worker only
		return loadDevices(b, devices, func(w int) bool {
			if round[w] == rounds {
				return false
			}
			phase := time.Duration(w) * interval / devices
			time.Sleep(time.Until(start.Add(phase + time.Duration(round[w])*interval)))
			round[w]++
			return true
		}, op)
	}

	echoAddr := startEcho(b)
	conns := dialEcho(b, echoAddr, devices)
	_, addr := startBenchDaemon(b, Config{MaxQueue: devices}, &testEngine{})
	clients := make([]*device.Client, devices)
	for i := range clients {
		clients[i] = benchClient(b, addr)
	}
	m := &serialproto.Infer{Prompt: "hi"}
	var echo, ttft []time.Duration
	for b.Loop() {
		echo = append(echo, paced(func(w int) (time.Duration, error) { return echoRoundTrip(conns[w]) })...)
		ttft = append(ttft, paced(func(w int) (time.Duration, error) {
			t0 := time.Now()
			var first time.Duration
			_, err := clients[w].Ask(context.Background(), m, func([]byte) error {
				if first == 0 {
					first = time.Since(t0)
				}
				return nil
			})
			return first, err
		})...)
	}
	e50, e99 := percentiles(echo)
	d50, d99 := percentiles(ttft)
	b.ReportMetric(e50, "echo-p50-µs")
	b.ReportMetric(e99, "echo-p99-µs")
	b.ReportMetric(d50, "ttft-p50-µs")
	b.ReportMetric(d99, "ttft-p99-µs")
	b.ReportMetric(d99-e99, "added-p99-µs")
	b.ReportMetric(float64(devices)/interval.Seconds(), "req/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDaemonStream: one device, answers of 200 tokens from an instant
// engine; reports allocations per token and frames per second (run with
// -cpu 1 for "through one core").
func BenchmarkDaemonStream(b *testing.B) {
	d, addr := startBenchDaemon(b, Config{DefaultMaxTokens: 1000}, &testEngine{})
	c := benchClient(b, addr)
	m := &serialproto.Infer{Prompt: strings.Repeat("w ", 199)} // the engine answers "echo: " + 199 words = 200 tokens
	b.ReportAllocs()
	start := time.Now()
	framesBefore := d.Stats().FramesIn.Load() + d.Stats().FramesOut.Load()
	for b.Loop() {
		if _, err := c.Ask(context.Background(), m, func([]byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	frames := d.Stats().FramesIn.Load() + d.Stats().FramesOut.Load() - framesBefore
	b.ReportMetric(float64(frames)/time.Since(start).Seconds(), "frames/s")
	b.ReportMetric(200, "tokens/op")
}
