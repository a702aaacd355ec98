package systemd

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatchdogPingsOnlyWhileAlive: pings every half timeout while Alive
// says progress, none while it does not, and again once it does.
func TestWatchdogPingsOnlyWhileAlive(t *testing.T) {
	c := notifySocket(t)
	n := NewNotifier(os.Getenv)
	var stuck atomic.Bool
	w := &Watchdog{
		Timeout: 200 * time.Millisecond,
		Alive: func(time.Time) error {
			if stuck.Load() {
				return errors.New("engine hung")
			}
			return nil
		},
		Ping: n.Watchdog,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	count := func(d time.Duration) int {
		n := 0
		end := time.Now().Add(d)
		for {
			left := time.Until(end)
			if left <= 0 {
				return n
			}
			if msg, ok := recvNotify(t, c, left); ok && msg == "WATCHDOG=1" {
				n++
			}
		}
	}
	if got := count(time.Second); got < 5 || got > 12 {
		t.Fatalf("%d pings in 1 s at a 100 ms period while alive", got)
	}
	stuck.Store(true)
	count(150 * time.Millisecond) // a ping already decided may arrive
	if got := count(600 * time.Millisecond); got != 0 {
		t.Fatalf("%d pings while stuck", got)
	}
	stuck.Store(false)
	if got := count(500 * time.Millisecond); got < 2 {
		t.Fatalf("%d pings after progress resumed", got)
	}
}

func TestWatchdogInterval(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", "")
	if d, err := WatchdogInterval(); err != nil || d != 30*time.Second {
		t.Fatalf("%v %v", d, err)
	}
	t.Setenv("WATCHDOG_PID", "1") // another process's watchdog
	if d, _ := WatchdogInterval(); d != 0 {
		t.Fatalf("watchdog for another pid: %v", d)
	}
	t.Setenv("WATCHDOG_USEC", "")
	if d, err := WatchdogInterval(); err != nil || d != 0 {
		t.Fatalf("no watchdog: %v %v", d, err)
	}
}
