package daemon

import (
	"context"
	"errors"
	"testing"
	"time"
)

// newTestAdmission is an admission over cfg (defaults applied) on a fake
// clock.
func newTestAdmission(cfg Config) (*admission, *fakeClock, *Stats) {
	cfg = cfg.WithDefaults()
	clk, stats := newFakeClock(), &Stats{}
	return newAdmission(func() *Config { return &cfg }, clk, stats), clk, stats
}

// TestAdmissionRefusesInOrderAndKeepsNothing: the holder's cap, then the
// queue bound, then the drain — and a refusal leaves nothing held.
func TestAdmissionRefusesInOrderAndKeepsNothing(t *testing.T) {
	a, _, stats := newTestAdmission(Config{MaxPerSession: 2, MaxConcurrent: 1, MaxQueue: 1})
	var dev, other places
	t1, err := a.admit(&dev, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.admit(&dev, "", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := a.admit(&dev, "", 0); !errors.Is(err, errHolderFull) {
		t.Fatalf("third of one holder: %v", err)
	}
	if _, err := a.admit(&other, "", 0); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("queue full: %v", err)
	}
	if dev.count() != 2 || other.count() != 0 || a.queued.Load() != 2 || stats.Busy.Load() != 2 {
		t.Fatalf("after refusals: places %d/%d, queued %d, busy %d", dev.count(), other.count(), a.queued.Load(), stats.Busy.Load())
	}
	t1.generated(0)
	a.drain()
	if _, err := a.admit(&other, "", 0); !errors.Is(err, errShuttingDown) {
		t.Fatalf("draining: %v", err)
	}
	if other.count() != 0 || a.queued.Load() != 1 {
		t.Fatalf("a refusal while draining kept places %d, queued %d", other.count(), a.queued.Load())
	}
}

// TestTicketGivesBackEachPartOnce: generated frees the queue place,
// delivered the holder's place, release whatever is left — each exactly
// once, in any order and however often they are called.
func TestTicketGivesBackEachPartOnce(t *testing.T) {
	for _, order := range [][]string{
		{"generated", "delivered", "release"},
		{"delivered", "generated", "release"},
		{"release", "generated", "delivered"},
		{"generated", "generated", "delivered", "delivered", "release", "release"},
	} {
		a, _, _ := newTestAdmission(Config{})
		var dev places
		tk, err := a.admit(&dev, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range order {
			switch step {
			case "generated":
				tk.generated(3)
			case "delivered":
				tk.delivered()
			case "release":
				tk.release()
			}
			if dev.count() < 0 || a.queued.Load() < 0 {
				t.Fatalf("%v: gave back twice (places %d, queued %d)", order, dev.count(), a.queued.Load())
			}
		}
		if dev.count() != 0 || a.queued.Load() != 0 {
			t.Fatalf("%v: places %d, queued %d left", order, dev.count(), a.queued.Load())
		}
	}
}

// TestTicketSettlesTheBudget: a request reserves what it may generate, cut
// to what is left; the end of generation gives back what it did not use; a
// spent budget refuses with nothing held; the period's end refills it.
func TestTicketSettlesTheBudget(t *testing.T) {
	rule := DeviceRule{TokenBudget: 10, BudgetPeriod: time.Hour}
	a, clk, stats := newTestAdmission(Config{Policy: AccessPolicy{Devices: map[string]DeviceRule{"meter": rule}}})
	var dev places
	first, err := a.admit(&dev, "meter", 6)
	if err != nil || !first.budgeted() || first.tokens != 6 {
		t.Fatalf("first: %v, %+v", err, first)
	}
	second, err := a.admit(&dev, "meter", 6)
	if err != nil || second.tokens != 4 {
		t.Fatalf("second, cut to what is left: %v, %d", err, second.tokens)
	}
	if _, err := a.admit(&dev, "meter", 1); !errors.Is(err, errBudgetSpent) || stats.RateLimited.Load() != 1 || dev.count() != 2 {
		t.Fatalf("spent: %v, rate-limited %d, places %d", err, stats.RateLimited.Load(), dev.count())
	}
	first.generated(2)  // 4 of its 6 come back
	second.release()    // nothing generated: all 4 come back
	second.generated(4) // too late: the reservation was settled
	third, err := a.admit(&dev, "meter", 100)
	if err != nil || third.tokens != 8 {
		t.Fatalf("after settling: %v, %d tokens (want 8)", err, third.tokens)
	}
	third.generated(8)
	if _, err := a.admit(&dev, "meter", 1); !errors.Is(err, errBudgetSpent) {
		t.Fatalf("spent again: %v", err)
	}
	clk.Advance(time.Hour) // a new period
	if tk, err := a.admit(&dev, "meter", 100); err != nil || tk.tokens != 10 {
		t.Fatalf("new period: %v", err)
	}
	var local places
	if tk, err := a.admit(&local, "", 100); err != nil || tk.budgeted() {
		t.Fatalf("no device, no budget: %v", err)
	}
}

// TestTicketChargesBeyondReservation: tokens generated beyond the
// reservation (a request with tools runs one generation per call, each up
// to it) are charged to the budget, not forgotten.
func TestTicketChargesBeyondReservation(t *testing.T) {
	rule := DeviceRule{TokenBudget: 10, BudgetPeriod: time.Hour}
	a, _, _ := newTestAdmission(Config{Policy: AccessPolicy{Devices: map[string]DeviceRule{"meter": rule}}})
	var dev places
	tk, err := a.admit(&dev, "meter", 4)
	if err != nil || tk.tokens != 4 {
		t.Fatalf("%v, %+v", err, tk)
	}
	tk.generated(9)
	tk.release()
	if next, err := a.admit(&dev, "meter", 100); err != nil || next.tokens != 1 {
		t.Fatalf("after 9 of 10 used: %v, %d tokens (want 1)", err, next.tokens)
	}
}

// TestSlotsAfterResize: a resize keeps the slots in use and hands out the
// new ones at once; shrinking lets the running finish and grants nothing
// until they are below the new size.
func TestSlotsAfterResize(t *testing.T) {
	a, _, _ := newTestAdmission(Config{MaxConcurrent: 1})
	ctx := context.Background()
	give, err := a.slot(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := a.slot(short, "d"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second slot of one: %v", err)
	}
	if running, waiting := a.slots.load(); running != 1 || waiting != 0 {
		t.Fatalf("after a cancelled wait: %d running, %d waiting", running, waiting)
	}
	got := make(chan func(), 1)
	go func() {
		g, err := a.slot(ctx, "e")
		if err != nil {
			t.Error(err)
		}
		got <- g
	}()
	waitFor(t, func() bool { _, w := a.slots.load(); return w == 1 })
	a.resize(2)
	g1 := <-got // the waiter gets the new slot
	if running, _ := a.load(); running != 2 {
		t.Fatalf("after growing to 2: %d running", running)
	}
	a.resize(1)
	give()
	give() // a second call gives back nothing
	short2, cancel2 := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel2()
	if _, err := a.slot(short2, "d"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a slot beyond the shrunk size: %v", err)
	}
	g1()
	g2, err := a.slot(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	g2()
}
