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
	errSourceFull  = errors.New("daemon: too many requests from one source")
	errLocalFull   = errors.New("daemon: local applications hold their share of the queue")
	errBudgetSpent = errors.New("daemon: token budget spent")
)

// admission decides whether a request may run, and keeps what an admitted
// request holds until it gives it back:
//
//   - a place among its holder's (a device's session, or a local client):
//     at most MaxPerSession each, so one device cannot fill the queue;
//   - a place among its device id's (across its sessions, MaxPerSession)
//     and its source's (one IP address or serial port, MaxPerSource), so
//     many sessions or many device ids from one host cannot either;
//   - for a local application, a place within the local share of the
//     queue (LocalShare), so the devices always have the rest;
//   - a place in the daemon's queue: running + waiting below
//     MaxConcurrent + MaxQueue;
//   - the tokens it may generate, reserved from its device's budget;
//   - while it generates, one of MaxConcurrent engine slots, handed out
//     round-robin by device (fair.go).
//
// Everything a request holds comes back through its ticket: a refusal
// halfway through admit, the end of generation and the end of delivery
// all give back through ticket.giveBack, each part exactly once.
type admission struct {
	conf  func() *Config
	clock clock
	stats *Stats

	slots      *fairSlots   // the engine's slots, fair by device
	queued     atomic.Int64 // admitted requests not done generating
	local      atomic.Int64 // of those, local applications'
	delivering atomic.Int64 // requests whose answer is still going out
	draining   atomic.Bool

	counts  keyCounts // places by device id and by source
	budgets budgets
}

func newAdmission(conf func() *Config, clk clock, stats *Stats) *admission {
	a := &admission{conf: conf, clock: clk, stats: stats, slots: newFairSlots(conf().MaxConcurrent)}
	return a
}

// claim is who a request is counted against besides its holder.
type claim struct {
	device string // device id: its budget and its places across sessions; "" none
	source string // source (IP address, serial port): its places; "" none
	local  bool   // a local application's: within the local share
	// holderMax is the holder's cap; 0: MaxPerSession (a device's). A
	// local client — an address, so all the applications of this machine
	// are one — has the local share as its cap.
	holderMax int
}

// keyCounts counts places by key (a device id, a source); only keys with
// places held are in the map, so it is bounded by the queue.
type keyCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (k *keyCounts) take(key string, max int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.n[key] >= max {
		return false
	}
	if k.n == nil {
		k.n = make(map[string]int)
	}
	k.n[key]++
	return true
}

func (k *keyCounts) give(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.n[key]--; k.n[key] <= 0 {
		delete(k.n, key)
	}
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
	keys   []string   // counted in a.counts (device id, source) with the place
	local  bool       // counted in a.local with the queue place

	placeHeld, queueHeld atomic.Bool
}

// admit takes, in this order, a place among h's, a place in the queue, and
// up to want tokens of device's budget (device "" or without a budget:
// none), unless the daemon is draining. It returns the ticket, or why not:
// errHolderFull, ErrQueueFull, errShuttingDown or errBudgetSpent — with
// nothing left held. Refusals for load and budget are counted.
func (a *admission) admit(h holder, device string, want int) (*ticket, error) {
	return a.admitAs(h, claim{device: device}, want)
}

// admitAs is admit with the request's device id, source and class: the
// places of each are bounded too (errHolderFull for the device id,
// errSourceFull, errLocalFull).
func (a *admission) admitAs(h holder, c claim, want int) (*ticket, error) {
	cfg := a.conf()
	device := c.device
	t := &ticket{a: a, holder: h}
	holderMax := cfg.MaxPerSession
	if c.holderMax > 0 {
		holderMax = c.holderMax
	}
	if !h.take(holderMax) {
		a.stats.Busy.Add(1)
		return nil, errHolderFull
	}
	t.placeHeld.Store(true)
	for _, k := range []struct {
		key string
		max int
		err error
	}{{"device:" + c.device, cfg.MaxPerSession, errHolderFull}, {"source:" + c.source, cfg.MaxPerSource, errSourceFull}} {
		if k.key == "device:" || k.key == "source:" || k.max <= 0 {
			continue
		}
		if !a.counts.take(k.key, k.max) {
			t.release()
			a.stats.Busy.Add(1)
			return nil, k.err
		}
		t.keys = append(t.keys, k.key)
	}
	total := cfg.MaxConcurrent + cfg.MaxQueue
	if c.local {
		if !addBelow(&a.local, localLimit(cfg)) {
			t.release()
			a.stats.Busy.Add(1)
			return nil, errLocalFull
		}
		t.local = true
	}
	if !addBelow(&a.queued, total) {
		if t.local {
			a.local.Add(-1)
			t.local = false
		}
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
		if t.local {
			t.a.local.Add(-1)
		}
		if t.budgeted() {
			// What was not used goes back; what was used beyond the
			// reservation is charged: a request with tools (§16) runs a
			// generation per call, each up to the reservation, and the
			// device pays for all it got.
			t.a.budgets.charge(t.device, t.rule, used-t.tokens, t.a.clock.Now())
		}
	}
	if place && t.placeHeld.CompareAndSwap(true, false) {
		t.holder.give()
		for _, k := range t.keys {
			t.a.counts.give(k)
		}
	}
}

// slot waits for an engine slot for holder key (round-robin among the
// holders waiting, fair.go); the returned func gives it back.
func (a *admission) slot(ctx context.Context, key string) (func(), error) {
	return a.slots.acquire(ctx, key)
}

// resize sets the number of engine slots; requests holding a slot keep it.
func (a *admission) resize(n int) { a.slots.resize(n) }

// load is how many requests hold an engine slot and how many wait for one.
func (a *admission) load() (running, waiting int) {
	running, _ = a.slots.load()
	return running, max(int(a.queued.Load())-running, 0)
}

// localLimit is how many places of the queue local applications may hold:
// LocalShare percent of it, at least one.
func localLimit(cfg *Config) int {
	return max((cfg.MaxConcurrent+cfg.MaxQueue)*cfg.LocalShare/100, 1)
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
	case errors.Is(err, errSourceFull):
		return serialproto.NewError(serialproto.CodeBusy, "this source has too many requests")
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

// charge adds n tokens used (negative: gives them back), past the budget
// if need be: they were generated.
func (b *budgets) charge(id string, r DeviceRule, n int, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a := b.account(id, r, now)
	a.used = max(a.used+n, 0)
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
