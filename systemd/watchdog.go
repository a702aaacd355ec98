package systemd

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// WatchdogInterval is the service watchdog's timeout for this process
// (WATCHDOG_USEC, when WATCHDOG_PID is unset or this process), 0 when the
// watchdog is off.
func WatchdogInterval() (time.Duration, error) { return daemon.SdWatchdogEnabled(false) }

// Watchdog pings at half the timeout, and only while Alive reports
// progress: a daemon that is up but stuck (a hung engine, a dead lock)
// stops pinging, and systemd kills and restarts it when the timeout runs
// out. Pinging from a timer alone would prove only that a timer runs.
type Watchdog struct {
	Timeout time.Duration             // WATCHDOG_USEC; Run returns at once when 0
	Alive   func(now time.Time) error // nil while the daemon makes progress
	Ping    func() error              // Notifier.Watchdog
	Log     *slog.Logger              // may be nil
}

// Run pings until ctx is done. It logs when it stops pinging (with Alive's
// reason) and when progress resumes, once each, not on every tick.
func (w *Watchdog) Run(ctx context.Context) {
	if w.Timeout <= 0 {
		return
	}
	log := w.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(w.Timeout / 2)
	defer t.Stop()
	held := false
	check := func(now time.Time) {
		if err := w.Alive(now); err != nil {
			if !held {
				log.Error("watchdog: not pinging, the daemon makes no progress; systemd restarts it when the watchdog times out",
					"timeout", w.Timeout, "err", err)
				held = true
			}
			return
		}
		if held {
			log.Info("watchdog: progress again, pinging")
			held = false
		}
		if err := w.Ping(); err != nil {
			log.Warn("watchdog ping failed", "err", err)
		}
	}
	check(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			check(now)
		}
	}
}
