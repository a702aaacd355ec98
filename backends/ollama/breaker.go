package ollama

import (
	"sync"
	"time"
)

// BreakerState is a circuit breaker's state.
type BreakerState uint8

const (
	// BreakerClosed: requests flow; consecutive failures are counted.
	BreakerClosed BreakerState = iota
	// BreakerOpen: no requests until the cool-down has passed.
	BreakerOpen
	// BreakerHalfOpen: one trial (a request or a health probe) decides
	// between closed and open again.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// breaker guards one endpoint: closed → open after threshold consecutive
// failures → half-open once cooldown has passed, where a single trial
// closes it again or reopens it. A failure that reopens a half-open
// breaker doubles the cool-down (at most 16×), so a dead endpoint costs one
// probe per growing interval, not one per request.
type breaker struct {
	threshold int
	cooldown  time.Duration
	onChange  func(from, to BreakerState) // called without mu held

	mu       sync.Mutex
	state    BreakerState
	failures int // consecutive, while closed
	reopens  int // consecutive half-open failures: the back-off exponent
	openedAt time.Time
	trial    bool // a half-open trial is out
	opened   int64
}

func newBreaker(threshold int, cooldown time.Duration, onChange func(from, to BreakerState)) *breaker {
	return &breaker{threshold: max(threshold, 1), cooldown: cooldown, onChange: onChange}
}

func (b *breaker) wait() time.Duration { return b.cooldown << min(b.reopens, 4) }

// allow reports whether a request may go out now. In half-open it hands
// out the single trial; whoever gets it must report success, failure or
// release.
func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	from := b.state
	ok := false
	switch b.state {
	case BreakerClosed:
		ok = true
	case BreakerOpen:
		if now.Sub(b.openedAt) >= b.wait() {
			b.state, b.trial, ok = BreakerHalfOpen, true, true
		}
	case BreakerHalfOpen:
		if !b.trial {
			b.trial, ok = true, true
		}
	}
	to := b.state
	b.mu.Unlock()
	b.changed(from, to)
	return ok
}

// ready is allow without taking anything: could a request go out now?
func (b *breaker) ready(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerOpen:
		return now.Sub(b.openedAt) >= b.wait()
	case BreakerHalfOpen:
		return !b.trial
	}
	return true
}

func (b *breaker) success() {
	b.mu.Lock()
	from := b.state
	b.state, b.failures, b.reopens, b.trial = BreakerClosed, 0, 0, false
	b.mu.Unlock()
	b.changed(from, BreakerClosed)
}

func (b *breaker) failure(now time.Time) {
	b.mu.Lock()
	from := b.state
	switch b.state {
	case BreakerClosed:
		b.failures++
		if b.failures >= b.threshold {
			b.state, b.openedAt, b.opened = BreakerOpen, now, b.opened+1
		}
	case BreakerHalfOpen:
		b.reopens++
		b.state, b.openedAt, b.trial, b.opened = BreakerOpen, now, false, b.opened+1
	}
	to := b.state
	b.mu.Unlock()
	b.changed(from, to)
}

// release returns a half-open trial that ended without a verdict (the
// caller cancelled, the server was merely busy).
func (b *breaker) release() {
	b.mu.Lock()
	b.trial = false
	b.mu.Unlock()
}

func (b *breaker) snapshot() (state BreakerState, failures int, opened int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.failures, b.opened
}

func (b *breaker) changed(from, to BreakerState) {
	if from != to && b.onChange != nil {
		b.onChange(from, to)
	}
}
