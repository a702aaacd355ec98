package daemon

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Why admission refused a request. ErrQueueFull is exported (local.go):
// the HTTP API tells a full queue from a client over its cap.
var (
	errHolderFull  = errors.New("daemon: too many requests from one holder")
	errBudgetSpent = errors.New("daemon: token budget spent")
)

// admission decides whether a request may run, and keeps what an admitted
// request holds until it gives it back:
//
//   - a place among its holder's (a device's session, or a local client):
//     at most MaxPerSession each, so one device cannot fill the queue;
//   - a place in the daemon's queue: running + waiting below
//     MaxConcurrent + MaxQueue;
//   - the tokens it may generate, reserved from its device's budget;
//   - while it generates, one of MaxConcurrent engine slots (slot).
//
// Everything a request holds comes back through its ticket: a refusal
// halfway through admit, the end of generation and the end of delivery
// all give back through ticket.giveBack, each part exactly once.
type admission struct {
	conf  func() *Config
	clock clock
	stats *Stats

	slots      atomic.Pointer[chan struct{}] // one token per running request; replaced by resize
	queued     atomic.Int64                  // admitted requests not done generating
	delivering atomic.Int64                  // requests whose answer is still going out
	draining   atomic.Bool

	budgets budgets
}

func newAdmission(conf func() *Config, clk clock, stats *Stats) *admission {
	a := &admission{conf: conf, clock: clk, stats: stats}
	a.resize(conf().MaxConcurrent)
	return a
}

// holder is whoever a request's place is counted against: a device's
// session or a local client.
type holder interface {
	take(max int) bool
	give()
}

// places counts one holder's admitted requests.
type places struct{ n atomic.Int64 }

func (p *places) take(max int) bool { return addBelow(&p.n, max) }

func (p *places) give()      { p.n.Add(-1) }
func (p *places) count() int { return int(p.n.Load()) }

// ticket is what one admitted request holds.
type ticket struct {
	a      *admission
	holder holder
	device string     // whose budget the tokens came from; "" for none
	rule   DeviceRule // the budget's rule when reserved
	tokens int        // reserved from the budget

	placeHeld, queueHeld atomic.Bool
}

// admit takes, in this order, a place among h's, a place in the queue, and
// up to want tokens of device's budget (device "" or without a budget:
// none), unless the daemon is draining. It returns the ticket, or why not:
// errHolderFull, ErrQueueFull, errShuttingDown or errBudgetSpent — with
// nothing left held. Refusals for load and budget are counted.
func (a *admission) admit(h holder, device string, want int) (*ticket, error) {
	cfg := a.conf()
	t := &ticket{a: a, holder: h}
	if !h.take(cfg.MaxPerSession) {
		a.stats.Busy.Add(1)
		return nil, errHolderFull
	}
	t.placeHeld.Store(true)
	if !addBelow(&a.queued, cfg.MaxConcurrent+cfg.MaxQueue) {
		t.release()
		a.stats.Busy.Add(1)
		return nil, ErrQueueFull
	}
	t.queueHeld.Store(true)
	if a.draining.Load() { // after enqueue: the drain waits for what is queued
		t.release()
		return nil, errShuttingDown
	}
	// Last: a refusal above would have had to give the tokens back.
	if rule, ok := cfg.Policy.Devices[device]; ok && rule.TokenBudget > 0 {
		got := a.budgets.take(device, rule, min(want, 65535), a.clock.Now())
		if got <= 0 {
			t.release()
			a.stats.RateLimited.Add(1)
			return nil, errBudgetSpent
		}
		t.device, t.rule, t.tokens = device, rule, got
	}
	return t, nil
}

// addBelow adds one to n unless n has reached limit; it reports whether it
// did. Lock-free: the queue bound is checked on every INFER.
func addBelow(n *atomic.Int64, limit int) bool {
	for {
		v := n.Load()
		if v >= int64(limit) {
			return false
		}
		if n.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// budgeted reports whether tokens came from a budget: the request must not
// generate more than Tokens.
func (t *ticket) budgeted() bool { return t.device != "" }

// generated ends the engine's part: the queue place is free for the next
// request — not only once a slow device has taken the last chunk — and the
// tokens reserved but not generated go back to the budget.
func (t *ticket) generated(used int) { t.giveBack(false, true, used) }

// delivered frees the holder's place: the device has acknowledged the
// whole answer, or the request is over.
func (t *ticket) delivered() { t.giveBack(true, false, 0) }

// release gives back whatever is still held, as if nothing was generated.
func (t *ticket) release() { t.giveBack(true, true, 0) }

// giveBack is the one way back: each part at most once, whichever of
// generated, delivered and release comes first.
func (t *ticket) giveBack(place, queue bool, used int) {
	if queue && t.queueHeld.CompareAndSwap(true, false) {
		t.a.queued.Add(-1)
		if t.budgeted() {
			t.a.budgets.take(t.device, t.rule, -max(t.tokens-used, 0), t.a.clock.Now())
		}
	}
	if place && t.placeHeld.CompareAndSwap(true, false) {
		t.holder.give()
	}
}

// slot waits for an engine slot; the returned func gives it back.
func (a *admission) slot(ctx context.Context) (func(), error) {
	slots := *a.slots.Load() // given back to the pool it came from, even after a resize
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// resize sets the number of engine slots; requests holding a slot give it
// back to the old pool.
func (a *admission) resize(n int) {
	slots := make(chan struct{}, n)
	a.slots.Store(&slots)
}

// load is how many requests hold an engine slot and how many wait for one.
func (a *admission) load() (running, waiting int) {
	running = len(*a.slots.Load())
	return running, max(int(a.queued.Load())-running, 0)
}

// drain refuses every request from now on.
func (a *admission) drain() { a.draining.Store(true) }

func (a *admission) isDraining() bool { return a.draining.Load() }

// deliveryStarted and deliveryEnded bracket the sending of one answer, so
// the drain can wait for answers on their way.
func (a *admission) deliveryStarted() { a.delivering.Add(1) }
func (a *admission) deliveryEnded()   { a.delivering.Add(-1) }

// waitIdle polls until no request is queued, running or being delivered,
// or the timeout passes; a shutdown is rare enough that polling beats more
// shared state. It runs on real time: the drain is the service's, not the
// protocol's.
func (a *admission) waitIdle(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for a.queued.Load() > 0 || a.delivering.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// refusal is how a device hears an admission refusal.
func refusal(err error) *serialproto.Error {
	switch {
	case errors.Is(err, errHolderFull):
		return serialproto.NewError(serialproto.CodeBusy, "this device has too many requests")
	case errors.Is(err, ErrQueueFull):
		return serialproto.NewError(serialproto.CodeBusy, "request queue full")
	case errors.Is(err, errBudgetSpent):
		return serialproto.NewError(serialproto.CodeRateLimited, "token budget spent")
	}
	return serialproto.NewError(serialproto.CodeShuttingDown, "shutting down")
}

// budgets are the devices' token accounts; only devices with a budget in
// the configuration have one, so the map is bounded by the configuration.
type budgets struct {
	mu  sync.Mutex
	acc map[string]*budget
}

type budget struct {
	start time.Time
	used  int
}

func (b *budgets) account(id string, r DeviceRule, now time.Time) *budget {
	if b.acc == nil {
		b.acc = make(map[string]*budget)
	}
	period := r.BudgetPeriod
	if period <= 0 {
		period = 24 * time.Hour
	}
	a := b.acc[id]
	if a == nil || now.Sub(a.start) >= period {
		a = &budget{start: now}
		b.acc[id] = a
	}
	return a
}

// take reserves up to n tokens (a negative n gives them back) and
// returns how many it reserved.
func (b *budgets) take(id string, r DeviceRule, n int, now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	a := b.account(id, r, now)
	if n < 0 {
		a.used = max(a.used+n, 0)
		return 0
	}
	n = min(n, r.TokenBudget-a.used)
	if n <= 0 {
		return 0
	}
	a.used += n
	return n
}
