package daemon

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when a test advances it: timers and
// tickers fire from Advance, so a test of a heartbeat, a budget period or a
// retransmission timeout takes no time and does not depend on the
// machine's load.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters map[*fakeWaiter]struct{}
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), waiters: make(map[*fakeWaiter]struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) timer   { return c.add(d, 0) }
func (c *fakeClock) NewTicker(d time.Duration) ticker { return c.add(d, d) }

func (c *fakeClock) add(d, period time.Duration) *fakeWaiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &fakeWaiter{c: c, ch: make(chan time.Time, 1), at: c.now.Add(d), period: period}
	c.waiters[w] = struct{}{}
	return w
}

// tickers counts the tickers of period p. A goroutine's ticker created
// after an Advance counts from the advanced time, so a test whose steps
// must each fire it waits for it first.
func (c *fakeClock) tickers(p time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for w := range c.waiters {
		if w.period == p {
			n++
		}
	}
	return n
}

// timerAt reports whether a timer (not a ticker) is set to fire at at: a
// goroutine that sets its next timer when it is done with a step shows the
// test that it is, before the test moves the clock on.
func (c *fakeClock) timerAt(at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.waiters {
		if w.period == 0 && w.at.Equal(at) {
			return true
		}
	}
	return false
}

// Advance moves the clock forward by d and fires what fell due: a timer
// once, a ticker once however many periods passed (a real ticker drops the
// ticks its reader missed, too).
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for w := range c.waiters {
		if w.at.After(c.now) {
			continue
		}
		select {
		case w.ch <- c.now:
		default:
		}
		if w.period == 0 {
			delete(c.waiters, w)
			continue
		}
		for !w.at.After(c.now) {
			w.at = w.at.Add(w.period)
		}
	}
}

// fakeWaiter is a fake timer or ticker.
type fakeWaiter struct {
	c      *fakeClock
	ch     chan time.Time
	at     time.Time
	period time.Duration // 0: a timer
}

func (w *fakeWaiter) C() <-chan time.Time { return w.ch }

func (w *fakeWaiter) Reset(d time.Duration) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	w.drain() // as time.Timer since Go 1.23: no stale tick after Reset
	w.at = w.c.now.Add(d)
	w.c.waiters[w] = struct{}{}
}

func (w *fakeWaiter) Stop() {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	w.drain()
	delete(w.c.waiters, w)
}

func (w *fakeWaiter) drain() {
	select {
	case <-w.ch:
	default:
	}
}

// advanceUntil moves clk forward by step until cond holds, giving the
// daemon's goroutines a moment to react after each step; it fails the test
// after 5 s of real time. What a step can start (a ticker created just
// after an Advance) the next step fires.
func advanceUntil(t *testing.T, clk *fakeClock, step time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5 s")
		}
		clk.Advance(step)
		for range 20 { // a bounded wait for the goroutines the step woke
			if cond() {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// advanceUntilDone is advanceUntil for a goroutine that reports its end on
// done: it returns what the goroutine reported.
func advanceUntilDone(t *testing.T, clk *fakeClock, step time.Duration, done <-chan error) error {
	t.Helper()
	var err error
	advanceUntil(t, clk, step, func() bool {
		select {
		case err = <-done:
			return true
		default:
			return false
		}
	})
	return err
}

func TestFakeClockFiresTimersAndTickers(t *testing.T) {
	clk := newFakeClock()
	start := clk.Now()
	tm := clk.NewTimer(time.Second)
	tk := clk.NewTicker(300 * time.Millisecond)
	clk.Advance(999 * time.Millisecond)
	select {
	case <-tm.C():
		t.Fatal("the timer fired early")
	default:
	}
	if got := <-tk.C(); !got.Equal(start.Add(999 * time.Millisecond)) {
		t.Fatalf("tick at %v", got.Sub(start))
	}
	clk.Advance(time.Millisecond)
	<-tm.C()
	tm.Reset(time.Second)
	clk.Advance(500 * time.Millisecond)
	select {
	case <-tm.C():
		t.Fatal("a reset timer fired early")
	default:
	}
	tm.Stop()
	clk.Advance(time.Hour)
	select {
	case <-tm.C():
		t.Fatal("a stopped timer fired")
	default:
	}
	<-tk.C() // the ticker goes on
}
