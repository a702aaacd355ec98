package impair

import (
	"context"
	"errors"
	"io"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// LineConfig describes a serial cable between two byte streams (the
// masters of two pseudo-terminal pairs: ptys carry bytes at memory speed
// and ignore the baud rate, so the shim is what makes the line slow and
// noisy).
type LineConfig struct {
	// Baud paces each direction at Baud/10 bytes a second (8N1: a start
	// bit, 8 data bits, a stop bit). 0: no pacing.
	Baud int
	// BitErrorRate flips each bit with this probability.
	BitErrorRate float64
	// DropRate loses each byte with this probability (a framing error the
	// UART discards).
	DropRate float64
	Seed     uint64
}

// LineStats count one direction's bytes.
type LineStats struct {
	Bytes, FlippedBits, DroppedBytes int64
}

type lineCounters struct{ bytes, flipped, dropped atomic.Int64 }

// Line is a running serial line shim.
type Line struct {
	ab, ba lineCounters
	wg     sync.WaitGroup
}

// StartLine joins a and b like a UART cable until ctx ends or either side
// fails (a pty closed: an unplugged cable); then both directions stop. Bytes from a reach b and bytes
// from b reach a, each direction paced and corrupted independently with its
// own seeded RNG.
func StartLine(ctx context.Context, a, b io.ReadWriter, cfg LineConfig) (*Line, error) {
	if cfg.BitErrorRate < 0 || cfg.BitErrorRate > 1 || cfg.DropRate < 0 || cfg.DropRate > 1 {
		return nil, errors.New("impair: line rates outside 0..1")
	}
	if cfg.Baud < 0 {
		return nil, errors.New("impair: negative baud rate")
	}
	l := &Line{}
	ctx, cancel := context.WithCancel(ctx)
	// Ending (ctx, or one side failing) interrupts both pumps' reads where
	// the sides support deadlines (an *os.File in Go's poller does).
	context.AfterFunc(ctx, func() {
		for _, side := range []io.ReadWriter{a, b} {
			if d, ok := side.(interface{ SetReadDeadline(time.Time) error }); ok {
				_ = d.SetReadDeadline(time.Unix(1, 0))
			}
		}
	})
	l.wg.Add(2)
	go func() { l.wg.Wait(); cancel() }()
	go l.pump(ctx, cancel, a, b, cfg, rand.New(rand.NewPCG(cfg.Seed, 5)), &l.ab)
	go l.pump(ctx, cancel, b, a, cfg, rand.New(rand.NewPCG(cfg.Seed+1, 5)), &l.ba)
	return l, nil
}

// Stats returns the counters of the a→b and b→a directions.
func (l *Line) Stats() (ab, ba LineStats) {
	snap := func(c *lineCounters) LineStats {
		return LineStats{Bytes: c.bytes.Load(), FlippedBits: c.flipped.Load(), DroppedBytes: c.dropped.Load()}
	}
	return snap(&l.ab), snap(&l.ba)
}

// Wait returns when both directions have stopped (ctx ended and each pump
// saw its next read, or a side failed).
func (l *Line) Wait() { l.wg.Wait() }

func (l *Line) pump(ctx context.Context, end context.CancelFunc, src io.Reader, dst io.Writer, cfg LineConfig, r *rand.Rand, c *lineCounters) {
	defer l.wg.Done()
	defer end()
	var perByte time.Duration
	if cfg.Baud > 0 {
		perByte = time.Duration(float64(time.Second) * 10 / float64(cfg.Baud))
	}
	buf := make([]byte, 256)
	var next time.Time // when the next byte may go out
	for ctx.Err() == nil {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		out := buf[:0]
		for _, b := range buf[:n] {
			c.bytes.Add(1)
			if cfg.DropRate > 0 && r.Float64() < cfg.DropRate {
				c.dropped.Add(1)
				continue
			}
			if cfg.BitErrorRate > 0 {
				var flip byte
				for bit := range 8 {
					if r.Float64() < cfg.BitErrorRate {
						flip |= 1 << bit
					}
				}
				c.flipped.Add(int64(bits.OnesCount8(flip)))
				b ^= flip
			}
			out = append(out, b)
		}
		if perByte == 0 {
			if _, err := dst.Write(out); err != nil {
				return
			}
			continue
		}
		// A UART sends a byte every perByte, back to back. A sleep lasts
		// far longer than the 87 µs of a byte at 115,200 baud (the timer's
		// resolution, a loaded machine), so the bytes that became due
		// meanwhile go out together: the rate over any stretch longer than
		// a sleep is the line's, never more. Only a line idle for longer
		// than slack loses its credit; a late wake-up does not.
		const slack = 2 * time.Millisecond
		if now := time.Now(); now.Sub(next) > slack {
			next = now // the line was idle: no credit for the quiet time
		}
		for len(out) > 0 {
			now := time.Now()
			if now.Before(next) {
				time.Sleep(next.Sub(now))
				continue
			}
			k := min(len(out), 1+int(now.Sub(next)/perByte))
			if _, err := dst.Write(out[:k]); err != nil {
				return
			}
			out = out[k:]
			next = next.Add(time.Duration(k) * perByte)
		}
	}
}
