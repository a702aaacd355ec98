package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
)

// floodSources is how many hostile UDP sources the flood uses: distinct
// addresses in 127.1.0.0/16 (all of 127.0.0.0/8 is loopback on Linux).
const floodSources = 1000

// flood is a thousand hostile sources, four kinds in turn: garbage
// datagrams, half-open sessions (a HELLO, then silence, again and again),
// unfinished fragment trains (the first of three INFER fragments, each
// time a new seq) and INFER floods (whole INFERs whose answers are never
// acknowledged).
type flood struct {
	conns []*net.UDPConn
	sent  atomic.Int64
}

func newFlood(t *testing.T) *flood {
	t.Helper()
	f := &flood{}
	for i := range floodSources {
		ip := netip.AddrFrom4([4]byte{127, 1, byte(i / 250), byte(i%250 + 1)})
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
		if err != nil {
			t.Skipf("cannot bind %v (127.0.0.0/8 not all loopback here?): %v", ip, err)
		}
		_ = c.SetReadBuffer(4096) // never read: answers are dropped by the kernel
		t.Cleanup(func() { c.Close() })
		f.conns = append(f.conns, c)
	}
	return f
}

func frame(t *testing.T, f serialproto.Frame) []byte {
	raw, err := serialproto.AppendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// run floods target until ctx ends, at most rate datagrams a second in all.
func (f *flood) run(ctx context.Context, t *testing.T, target netip.AddrPort, rate int) {
	dst := net.UDPAddrFromAddrPort(target)
	hello := func(i, round int) []byte {
		b, _ := (&serialproto.Hello{MinVersion: 1, MaxVersion: 1, MaxData: 256, Window: 4, BootNonce: uint32(round<<16 | i), DeviceID: "hostile-" + strconv.Itoa(i)}).AppendBody(nil)
		return frame(t, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdHello, Seq: 1, Data: b})
	}
	infer := func(seq uint8, prompt string, onlyFirst bool) []byte {
		body, _ := (&serialproto.Infer{Prompt: prompt}).AppendBody(nil)
		datas, _ := serialproto.Fragments(body, 200)
		if onlyFirst {
			datas = datas[:1]
		}
		return frame(t, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdInfer, Flags: serialproto.FlagFragment, Seq: seq, Data: datas[0]})
	}
	long := strings.Repeat("never finished ", 40) // three fragments
	r := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 300)
	// Every source opens its session first (the garbage ones excepted).
	for i, c := range f.conns {
		if i%4 != 0 {
			_, _ = c.WriteToUDP(hello(i, 0), dst)
			f.sent.Add(1)
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	perTick := max(rate/100, 1)
	for round := 1; ctx.Err() == nil; round++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for range perTick {
			i := r.IntN(len(f.conns))
			seq := uint8(round%250 + 2)
			var pkt []byte
			switch i % 4 {
			case 0:
				n := 1 + r.IntN(len(garbage))
				for k := range n {
					garbage[k] = byte(r.Uint32())
				}
				if r.IntN(2) == 0 {
					garbage[0] = serialproto.Magic // looks like a frame, fails its checks
				}
				pkt = garbage[:n]
			case 1:
				pkt = hello(i, round) // a new session each time, never used
			case 2:
				pkt = infer(seq, long, true)
			case 3:
				pkt = infer(seq, fmt.Sprintf("flood %d %d", i, round), false)
			}
			_, _ = f.conns[i].WriteToUDP(pkt, dst)
			f.sent.Add(1)
		}
	}
}

// memWatch samples the heap and the process's RSS until stopped.
type memWatch struct {
	peakHeap, peakRSS atomic.Uint64
	stop              chan struct{}
	done              chan struct{}
}

func watchMemory() *memWatch {
	w := &memWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > w.peakHeap.Load() {
				w.peakHeap.Store(ms.HeapInuse)
			}
			if rss := readRSS(); rss > w.peakRSS.Load() {
				w.peakRSS.Store(rss)
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *memWatch) end() (heap, rss uint64) {
	close(w.stop)
	<-w.done
	return w.peakHeap.Load(), w.peakRSS.Load()
}

// readRSS is VmRSS from /proc/self/status, in bytes (0 where unknown).
func readRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// memoryBound is the documented bound (docs/reliability.md) on what the
// daemon's state may hold under any flood, from its limits: each session
// its reassembly buffers and a few KiB of its own, each queued or streaming
// request its answer, each tracked source its bucket; plus slack for the
// runtime and the test's own devices.
func memoryBound(cfg daemon.Config) uint64 {
	cfg = cfg.WithDefaults()
	perSession := uint64(cfg.MaxPendingPerPeer*cfg.MaxMessage + 8<<10)
	requests := uint64(cfg.MaxSessions*cfg.MaxPerSession) * 4 << 10 // a short answer and its frames each
	return uint64(cfg.MaxSessions)*perSession + requests + uint64(cfg.MaxPeers)*256 + 32<<20
}

// TestHostileFlood: 1,000 hostile sources flood the daemon while four
// legitimate devices keep asking. Memory stays under the bound of the
// limits, the devices keep being served (their TTFT reported with and
// without the flood), nothing panics. With a policy that admits only the
// devices' network, the flood is refused at HELLO.
func TestHostileFlood(t *testing.T) {
	f := newFlood(t)
	// The legitimate devices ask every 10 ms (a busy sensor); the
	// per-source limit sits far above what they send.
	guard := daemon.Config{PeerRate: 1000, PeerBurst: 256, Heartbeat: time.Second}
	for _, tc := range []struct {
		name   string
		cfg    daemon.Config
		flood  bool
		during bool // the devices connect after the flood started
	}{
		{"legit devices only (baseline)", guard, false, false},
		{"1,000-source flood, open policy", guard, true, false},
		{"1,000-source flood, open policy, devices connect during it", guard, true, true},
		{"1,000-source flood, policy admits 127.0.0.1/32 only", withNetworks(guard, "127.0.0.1/32"), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &Echo{}
			r := startDaemon(t, tc.cfg, e)
			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			mem := watchMemory()
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			sentBefore := f.sent.Load()
			startFlood := func() {
				wg.Add(1)
				go func() { defer wg.Done(); f.run(ctx, t, r.addr, 20000) }()
				time.Sleep(300 * time.Millisecond)
			}
			if tc.during {
				startFlood()
			}
			// The devices have their sessions; then the flood starts, and
			// they ask through it.
			row := devicesThen(t, r.addr, 4, 100000, device.Config{DeviceID: "legit", MaxData: 128, Window: 4, RTO: 100 * time.Millisecond, Retries: 10}, plain, AnswerFor, 10*time.Millisecond, func() {
				if tc.flood && !tc.during {
					startFlood()
				}
			})
			cancel()
			wg.Wait()
			heap, rss := mem.end()
			settle(t, r.d)
			st := r.d.Stats()
			row.Scenario = tc.name
			row.Duplicated = e.Duplicated()
			row.Retransmits = st.Retransmits.Load()
			growth := heap - min(heap, before.HeapInuse)
			bound := memoryBound(tc.cfg)
			row.Note = fmt.Sprintf("peak heap +%.1f MiB (bound %.0f MiB), peak RSS %.0f MiB", float64(growth)/(1<<20), float64(bound)/(1<<20), float64(rss)/(1<<20))
			if tc.flood {
				row.Note += fmt.Sprintf("; flood %d datagrams; daemon: %d bad, %d rate-limited, %d forbidden, %d evicted, %d busy",
					f.sent.Load()-sentBefore, st.BadFrames.Load(), st.RateLimited.Load(), st.Forbidden.Load(), st.Evicted.Load(), st.Busy.Load())
			}
			check(t, row, false)
			if growth > bound {
				t.Errorf("heap grew by %d bytes, above the bound %d", growth, bound)
			}
			record(t, row)
		})
	}
}

func withNetworks(c daemon.Config, nets ...string) daemon.Config {
	for _, n := range nets {
		c.Policy.Networks = append(c.Policy.Networks, netip.MustParsePrefix(n))
	}
	return c
}

// udpDrops is how many datagrams the kernel dropped at the UDP socket bound
// to port on 127.0.0.1 (the drops column of /proc/net/udp): a full receive
// buffer drops every source's datagrams alike, before any per-source limit.
func udpDrops(port uint16) int64 {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return -1
	}
	local := fmt.Sprintf("0100007F:%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 13 && f[1] == local {
			n, _ := strconv.ParseInt(f[12], 10, 64)
			return n
		}
	}
	return -1
}
