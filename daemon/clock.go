package daemon

import "time"

// clock is where the daemon reads the time and sets its timers: session
// expiry (the janitor's ticks and each session's last frame), reassembly
// expiry, token budget periods, the per-source rate limit, the AUTH_FAILED
// and NACK rate limits, the NACK MISSING timer, the liveness checks and a
// stream's retransmission and flush timers. Tests put a fake clock in its
// place (newDaemon) and move it forward instead of sleeping through
// heartbeats and budget periods.
//
// Left on the real clock: a request's deadline (a context deadline the
// engine sees), the shutdown drain, and the links' own reopen and scan
// timers, which wait on the operating system, not on the protocol.
type clock interface {
	Now() time.Time
	NewTimer(d time.Duration) timer
	NewTicker(d time.Duration) ticker
}

// timer is a time.Timer as the clock hands it out.
type timer interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

// ticker is a time.Ticker as the clock hands it out.
type ticker interface {
	C() <-chan time.Time
	Stop()
}

// systemClock is the real time.
type systemClock struct{}

func (systemClock) Now() time.Time                   { return time.Now() }
func (systemClock) NewTimer(d time.Duration) timer   { return systemTimer{time.NewTimer(d)} }
func (systemClock) NewTicker(d time.Duration) ticker { return systemTicker{time.NewTicker(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time   { return t.t.C }
func (t systemTimer) Reset(d time.Duration) { t.t.Reset(d) }
func (t systemTimer) Stop()                 { t.t.Stop() }

type systemTicker struct{ t *time.Ticker }

func (t systemTicker) C() <-chan time.Time { return t.t.C }
func (t systemTicker) Stop()               { t.t.Stop() }
