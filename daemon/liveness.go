package daemon

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStalled is what Alive reports when the daemon stopped making progress.
var ErrStalled = errors.New("daemon: stalled")

// janitorStall is how long the janitor may miss its ticks before the
// dispatch lock counts as stuck. The janitor ticks every Heartbeat/4 (1.25 s
// by default) and takes the lock every frame takes, so a tick missed for
// this long means frames cannot be dispatched either.
const janitorStall = 15 * time.Second

// liveness is what the service watchdog asks about: is the dispatch loop
// still turning, and is every engine call still producing output? Idle is
// alive: no traffic is not a hang. Waiting on a slow device is alive too:
// the stream never blocks the engine's callback, so a call without output
// is the engine's own doing.
type liveness struct {
	clock    clock
	lastBeat atomic.Int64 // unix ns of the janitor's last tick, 0 before Run

	mu    sync.Mutex
	calls map[*engineCall]struct{}
}

// engineCall is one Generate in progress.
type engineCall struct {
	clock clock
	last  atomic.Int64 // unix ns of the latest output, or of the start
}

func (l *liveness) beat(now time.Time) { l.lastBeat.Store(now.UnixNano()) }

func (l *liveness) begin() *engineCall {
	c := &engineCall{clock: l.clock}
	c.last.Store(l.clock.Now().UnixNano())
	l.mu.Lock()
	if l.calls == nil {
		l.calls = make(map[*engineCall]struct{})
	}
	l.calls[c] = struct{}{}
	l.mu.Unlock()
	return c
}

func (l *liveness) end(c *engineCall) {
	l.mu.Lock()
	delete(l.calls, c)
	l.mu.Unlock()
}

// step records output; it is on the per-token path, so one atomic store.
func (c *engineCall) step() { c.last.Store(c.clock.Now().UnixNano()) }

// Alive reports nil while the daemon makes progress: the janitor ticks
// (so the lock that dispatch takes is free) and no engine call has gone
// without output for StallTimeout. Otherwise it returns an error wrapping
// ErrStalled that says what is stuck. A daemon that is not running yet
// (the model still loading) is alive: start-up has its own timeout.
func (d *Daemon) Alive(now time.Time) error {
	if beat := d.live.lastBeat.Load(); beat != 0 {
		if since := now.Sub(time.Unix(0, beat)); since > janitorStall {
			return fmt.Errorf("%w: the dispatch loop has not ticked for %v", ErrStalled, since.Round(time.Millisecond))
		}
	}
	limit := d.conf().StallTimeout
	var oldest time.Duration
	stuck := 0
	d.live.mu.Lock()
	for c := range d.live.calls {
		if since := now.Sub(time.Unix(0, c.last.Load())); since > limit {
			stuck++
			oldest = max(oldest, since)
		}
	}
	d.live.mu.Unlock()
	if stuck > 0 {
		return fmt.Errorf("%w: %d engine call(s) without output for %v (limit %v)", ErrStalled, stuck, oldest.Round(time.Millisecond), limit)
	}
	return nil
}
