// Package impair injects link faults for tests and soak runs, on loopback
// only: an impairing UDP proxy (loss, duplication, reordering, delay) and a
// serial line shim between two pseudo-terminals (baud-rate pacing, bit
// flips, dropped bytes). Every random decision comes from a seeded RNG, so a
// scenario replays the same faults in the same order of datagrams or bytes.
//
// tc netem does not exist in the kernels mcpd is tested on, and nftables
// cannot reorder; a proxy in the test's own process can.
package impair

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Faults describe what happens to the datagrams of one direction.
// Probabilities are per datagram, in 0..1.
type Faults struct {
	Loss      float64       // dropped
	Duplicate float64       // sent twice (the copy right after the original)
	Reorder   float64       // held back and sent after the next datagram
	Delay     time.Duration // added to every datagram
	Jitter    time.Duration // uniform 0..Jitter more; order is kept (reordering is Reorder's)
	// ReorderHold is the longest a held-back datagram waits for a successor
	// before it goes out anyway; default 50 ms.
	ReorderHold time.Duration
	// Replay is the probability that a datagram is captured and delivered
	// once more, late — ReplayAfter plus uniform 0..ReplayJitter after the
	// original, whatever became of the original: a path that held a copy,
	// or an attacker replaying what it recorded. Its decisions come from a
	// random stream of their own, so setting it moves no other fault.
	Replay       float64
	ReplayAfter  time.Duration
	ReplayJitter time.Duration
}

func (f Faults) validate() error {
	for _, p := range []float64{f.Loss, f.Duplicate, f.Reorder, f.Replay} {
		if p < 0 || p > 1 {
			return fmt.Errorf("impair: probability %v outside 0..1", p)
		}
	}
	if f.Delay < 0 || f.Jitter < 0 || f.ReorderHold < 0 || f.ReplayAfter < 0 || f.ReplayJitter < 0 {
		return errors.New("impair: negative delay")
	}
	return nil
}

// UDPConfig configures a UDPProxy.
type UDPConfig struct {
	Target netip.AddrPort // the server (mcpd); must be a loopback address
	Listen netip.AddrPort // where clients send; default 127.0.0.1:0
	Up     Faults         // client → target
	Down   Faults         // target → client
	Seed   uint64
}

// DirStats count one direction's datagrams. Replayed counts the late copies
// sent (Out does not include them).
type DirStats struct {
	In, Out, Dropped, Duplicated, Reordered, Replayed int64
}

// UDPStats count both directions.
type UDPStats struct{ Up, Down DirStats }

type dirCounters struct {
	in, out, dropped, duplicated, reordered, replayed atomic.Int64
}

func (c *dirCounters) snapshot() DirStats {
	return DirStats{In: c.in.Load(), Out: c.out.Load(), Dropped: c.dropped.Load(), Duplicated: c.duplicated.Load(), Reordered: c.reordered.Load(), Replayed: c.replayed.Load()}
}

// UDPProxy forwards datagrams between clients and one target through its
// faults. Each client gets its own upstream socket, so the target sees one
// source address per client, as it would without the proxy.
type UDPProxy struct {
	cfg      UDPConfig
	conn     *net.UDPConn
	up, down dirCounters

	mu    sync.Mutex
	flows map[netip.AddrPort]*flow
	nflow uint64
	wg    sync.WaitGroup
}

// NewUDPProxy opens the proxy's listening socket. Serve it with Run.
func NewUDPProxy(cfg UDPConfig) (*UDPProxy, error) {
	if err := errors.Join(cfg.Up.validate(), cfg.Down.validate()); err != nil {
		return nil, err
	}
	if !cfg.Target.Addr().IsLoopback() {
		return nil, fmt.Errorf("impair: target %v is not on loopback", cfg.Target)
	}
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	if !cfg.Listen.Addr().IsLoopback() {
		return nil, fmt.Errorf("impair: listen address %v is not on loopback", cfg.Listen)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(cfg.Listen))
	if err != nil {
		return nil, fmt.Errorf("impair: %w", err)
	}
	return &UDPProxy{cfg: cfg, conn: conn, flows: make(map[netip.AddrPort]*flow)}, nil
}

// Addr is where clients send to reach the target through the faults.
func (p *UDPProxy) Addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Stats returns the counters so far.
func (p *UDPProxy) Stats() UDPStats {
	return UDPStats{Up: p.up.snapshot(), Down: p.down.snapshot()}
}

// Run forwards until ctx ends, then closes every socket and waits for its
// goroutines.
func (p *UDPProxy) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { p.conn.Close() })
	defer stop()
	defer p.closeFlows()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		f, err := p.flow(ctx, from)
		if err != nil {
			return err
		}
		f.upDir.push(buf[:n])
	}
}

func (p *UDPProxy) closeFlows() {
	p.mu.Lock()
	for _, f := range p.flows {
		f.conn.Close()
		f.upDir.stop()
		f.downDir.stop()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// flow is one client: its upstream socket and each direction's faults.
type flow struct {
	conn           *net.UDPConn // connected to the target
	upDir, downDir *direction
}

func (p *UDPProxy) flow(ctx context.Context, client netip.AddrPort) (*flow, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.flows[client]; f != nil {
		return f, nil
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.cfg.Target))
	if err != nil {
		return nil, fmt.Errorf("impair: upstream socket: %w", err)
	}
	// Each flow and direction has its own stream of random numbers, so one
	// client's traffic does not change the faults another one sees.
	k := p.nflow
	p.nflow++
	f := &flow{conn: conn}
	f.upDir = newDirection(p.cfg.Up, p.rngs(2*k), &p.up, func(b []byte) error {
		_, err := conn.Write(b)
		return err
	})
	f.downDir = newDirection(p.cfg.Down, p.rngs(2*k+1), &p.down, func(b []byte) error {
		_, err := p.conn.WriteToUDPAddrPort(b, client)
		return err
	})
	p.flows[client] = f
	p.wg.Add(1)
	go func() { // the target's answers
		defer p.wg.Done()
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			n, err := conn.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP port unreachable while the target restarts
			}
			f.downDir.push(buf[:n])
		}
	}()
	return f, nil
}

// replaySalt keeps the replay decisions' random stream apart from the
// other faults' under the same seed.
const replaySalt = 0x7265706c6179 // "replay"

// rngs are one direction's random streams: the faults', and the replays'.
func (p *UDPProxy) rngs(stream uint64) [2]*rand.Rand {
	return [2]*rand.Rand{rand.New(rand.NewPCG(p.cfg.Seed, stream)), rand.New(rand.NewPCG(p.cfg.Seed^replaySalt, stream))}
}

// direction applies Faults to a sequence of datagrams. Decisions are drawn
// in arrival order from a seeded RNG; delays run on timers.
type direction struct {
	faults Faults
	rng    *rand.Rand
	replay *rand.Rand // Replay's own decisions
	count  *dirCounters
	send   func([]byte) error

	mu      sync.Mutex
	held    []byte      // a datagram waiting for its successor (reordering)
	holdGen uint64      // which hold the timer belongs to
	holdT   *time.Timer // releases held if no successor comes
	stopped bool
	queue   chan timed    // the delay line; nil without Delay and Jitter
	lastDue time.Time     // the queue's last due time
	drained chan struct{} // closed when the delay line has stopped
	halted  atomic.Bool   // stopped, for the delay line
}

func newDirection(f Faults, r [2]*rand.Rand, c *dirCounters, send func([]byte) error) *direction {
	if f.ReorderHold <= 0 {
		f.ReorderHold = 50 * time.Millisecond
	}
	d := &direction{faults: f, rng: r[0], replay: r[1], count: c, send: send}
	if f.Delay > 0 || f.Jitter > 0 {
		d.queue = make(chan timed, 4096)
		d.drained = make(chan struct{})
		go d.delayLine()
	}
	return d
}

// push takes one datagram (copied) through the faults.
func (d *direction) push(b []byte) {
	d.count.in.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	// Draw every number each time, whatever the outcome, so that one
	// setting's change does not shift the others' decisions.
	lose, dup, reorder, jit := d.rng.Float64(), d.rng.Float64(), d.rng.Float64(), d.rng.Float64()
	if d.faults.Replay > 0 {
		if replay, late := d.replay.Float64(), d.replay.Float64(); replay < d.faults.Replay {
			d.replayLate(append([]byte(nil), b...), d.faults.ReplayAfter+time.Duration(late*float64(d.faults.ReplayJitter)))
		}
	}
	if lose < d.faults.Loss {
		d.count.dropped.Add(1)
		return
	}
	pkt := append([]byte(nil), b...)
	copies := 1
	if dup < d.faults.Duplicate {
		copies = 2
		d.count.duplicated.Add(1)
	}
	if d.held == nil && reorder < d.faults.Reorder {
		d.held = pkt
		d.count.reordered.Add(1)
		if copies == 2 {
			d.emit(pkt, jit) // the copy goes ahead, the original is late
		}
		d.holdGen++
		gen := d.holdGen
		d.holdT = time.AfterFunc(d.faults.ReorderHold, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.held != nil && d.holdGen == gen {
				held := d.held
				d.held = nil
				d.emit(held, 0)
			}
		})
		return
	}
	for range copies {
		d.emit(pkt, jit)
	}
	if d.held != nil { // the successor went out: now the one held back
		d.holdT.Stop()
		d.emit(d.held, jit)
		d.held = nil
	}
}

// replayLate sends pkt once more after late, unless the direction has
// stopped by then. Called with d.mu held.
func (d *direction) replayLate(pkt []byte, late time.Duration) {
	time.AfterFunc(late, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if !d.stopped && d.send(pkt) == nil {
			d.count.replayed.Add(1)
		}
	})
}

// emit sends now, or queues for the delay. Called with d.mu held.
func (d *direction) emit(pkt []byte, jit float64) {
	if d.stopped {
		return
	}
	if d.queue == nil {
		if d.send(pkt) == nil {
			d.count.out.Add(1)
		}
		return
	}
	due := time.Now().Add(d.faults.Delay + time.Duration(jit*float64(d.faults.Jitter)))
	if due.Before(d.lastDue) {
		due = d.lastDue // a delay line keeps order; reordering is Reorder's job
	}
	d.lastDue = due
	select {
	case d.queue <- timed{pkt, due}:
	default:
		d.count.dropped.Add(1) // the delay line is full, as a router's queue would be
	}
}

type timed struct {
	pkt []byte
	due time.Time
}

// delayLine sends queued datagrams at their due times, in order.
func (d *direction) delayLine() {
	defer close(d.drained)
	for t := range d.queue {
		time.Sleep(time.Until(t.due))
		if d.halted.Load() {
			continue // stopping: what is still queued is lost, not sent late
		}
		if d.send(t.pkt) == nil {
			d.count.out.Add(1)
		}
	}
}

func (d *direction) stop() {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return
	}
	d.stopped = true
	d.halted.Store(true)
	if d.holdT != nil {
		d.holdT.Stop()
	}
	if d.queue != nil {
		close(d.queue)
	}
	d.mu.Unlock()
	if d.queue != nil {
		<-d.drained
	}
}
