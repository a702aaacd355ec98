package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/mcpd-project/mcpd/internal/impair"
)

// runImpair puts the impairing UDP proxy of internal/impair between
// devices (mcpctl, a simulated or real device on this machine) and mcpd:
// point the device at --listen and the proxy forwards to --target with the
// faults applied both ways (docs/reliability.md).
func runImpair(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("impair", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describeCommand(fs, stderr, "[flags]", `A lossy link on loopback for testing firmware and the daemon: devices send
to --listen, the proxy forwards to mcpd at --target and back, losing,
duplicating, reordering and delaying datagrams with a seeded random source
(the same --seed drops the same datagrams). --replay also delivers a share
of the datagrams once more, late (--replay-after plus up to --replay-jitter
after the original): old INFERs, ACKs and HELLOs reaching mcpd long after
their requests ended, as a path holding copies or an attacker replaying a
recording would. Runs until interrupted or for --duration.`)
	listen := fs.String("listen", "127.0.0.1:7800", "where devices send (loopback only)")
	target := fs.String("target", "127.0.0.1:7700", "mcpd's UDP address (loopback only)")
	loss := fs.Float64("loss", 0.10, "probability a datagram is lost, each direction")
	dup := fs.Float64("dup", 0.05, "probability a datagram is duplicated")
	reorder := fs.Float64("reorder", 0.10, "probability a datagram is held back until after the next")
	delay := fs.Duration("delay", 0, "delay added to every datagram")
	jitter := fs.Duration("jitter", 0, "up to this much more delay (order kept)")
	replay := fs.Float64("replay", 0, "probability a datagram is delivered once more, late")
	replayAfter := fs.Duration("replay-after", 500*time.Millisecond, "how late a replayed copy comes, at least")
	replayJitter := fs.Duration("replay-jitter", time.Second, "up to this much later still")
	seed := fs.Uint64("seed", 1, "random seed: the same seed drops the same datagrams")
	duration := fs.Duration("duration", 0, "stop after this long (0: until interrupted)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	la, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	ta, err := netip.ParseAddrPort(*target)
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	faults := impair.Faults{Loss: *loss, Duplicate: *dup, Reorder: *reorder, Delay: *delay, Jitter: *jitter,
		Replay: *replay, ReplayAfter: *replayAfter, ReplayJitter: *replayJitter}
	p, err := impair.NewUDPProxy(impair.UDPConfig{Listen: la, Target: ta, Up: faults, Down: faults, Seed: *seed})
	if err != nil {
		return err
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	fmt.Fprintf(stdout, "impairing %v → %v: loss %g, duplication %g, reordering %g, delay %v+%v, replay %g (%v+%v late), seed %d\n",
		p.Addr(), ta, *loss, *dup, *reorder, *delay, *jitter, *replay, *replayAfter, *replayJitter, *seed)
	start := time.Now()
	err = p.Run(ctx)
	st := p.Stats()
	for _, d := range []struct {
		name string
		s    impair.DirStats
	}{{"to mcpd", st.Up}, {"to devices", st.Down}} {
		fmt.Fprintf(stdout, "%-10s %d in, %d out, %d dropped, %d duplicated, %d reordered, %d replayed\n",
			d.name, d.s.In, d.s.Out, d.s.Dropped, d.s.Duplicated, d.s.Reordered, d.s.Replayed)
	}
	fmt.Fprintf(stdout, "ran %v\n", time.Since(start).Round(time.Millisecond))
	return err
}
