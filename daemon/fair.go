package daemon

import (
	"context"
	"sync"
)

// fairSlots are the engine's slots, handed out fairly: requests waiting
// for one queue per holder (a device's source — its IP address or serial
// port —, or a local client), and a freed
// slot goes to the holders in turn — round-robin by holder, not by arrival
// — so one device's queued requests cannot make another device wait
// behind all of them. A holder already running its fair share (the slots
// divided among the holders running or waiting, rounded up) is passed
// over while another holder below its share waits; alone, a holder may
// use every slot (no slot idles while work waits).
type fairSlots struct {
	mu      sync.Mutex
	n       int            // slots
	running int            // slots in use
	perKey  map[string]int // slots in use by holder
	waiting map[string][]*slotWaiter
	turn    []string // holders with waiters, in the order they are served
}

type slotWaiter struct {
	key     string
	ready   chan struct{} // closed when granted
	granted bool          // under mu
}

func newFairSlots(n int) *fairSlots {
	return &fairSlots{n: n, perKey: make(map[string]int), waiting: make(map[string][]*slotWaiter)}
}

// acquire waits for a slot for holder key; the returned func gives it back.
func (f *fairSlots) acquire(ctx context.Context, key string) (func(), error) {
	f.mu.Lock()
	if f.running < f.n && len(f.turn) == 0 {
		f.grantLocked(key)
		f.mu.Unlock()
		return f.releaser(key), nil
	}
	w := &slotWaiter{key: key, ready: make(chan struct{})}
	if len(f.waiting[key]) == 0 {
		f.turn = append(f.turn, key)
	}
	f.waiting[key] = append(f.waiting[key], w)
	f.mu.Unlock()
	select {
	case <-w.ready:
		return f.releaser(key), nil
	case <-ctx.Done():
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.granted { // granted as the context ended: give it to the next
		f.releaseLocked(key)
		return nil, context.Cause(ctx)
	}
	q := f.waiting[key]
	for i, x := range q {
		if x == w {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(f.waiting, key)
		f.dropTurn(key)
	} else {
		f.waiting[key] = q
	}
	return nil, context.Cause(ctx)
}

func (f *fairSlots) releaser(key string) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.releaseLocked(key)
			f.mu.Unlock()
		})
	}
}

func (f *fairSlots) grantLocked(key string) {
	f.running++
	f.perKey[key]++
}

func (f *fairSlots) releaseLocked(key string) {
	f.running--
	if f.perKey[key]--; f.perKey[key] <= 0 {
		delete(f.perKey, key)
	}
	f.dispatchLocked()
}

func (f *fairSlots) dropTurn(key string) {
	for i, k := range f.turn {
		if k == key {
			f.turn = append(f.turn[:i:i], f.turn[i+1:]...)
			return
		}
	}
}

// dispatchLocked hands free slots to waiters: the first holder in turn
// below its fair share, else the first in turn; a served holder with more
// waiting goes to the back.
func (f *fairSlots) dispatchLocked() {
	for f.running < f.n && len(f.turn) > 0 {
		active := len(f.turn)
		for k := range f.perKey {
			if len(f.waiting[k]) == 0 {
				active++
			}
		}
		share := (f.n + active - 1) / active
		pick := 0
		for i, k := range f.turn {
			if f.perKey[k] < share {
				pick = i
				break
			}
		}
		key := f.turn[pick]
		f.turn = append(f.turn[:pick:pick], f.turn[pick+1:]...)
		q := f.waiting[key]
		w := q[0]
		if len(q) == 1 {
			delete(f.waiting, key)
		} else {
			f.waiting[key] = q[1:]
			f.turn = append(f.turn, key)
		}
		w.granted = true
		f.grantLocked(key)
		close(w.ready)
	}
}

// resize sets the number of slots; requests running keep theirs.
func (f *fairSlots) resize(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n = n
	f.dispatchLocked()
}

// load is how many slots are in use and how many requests wait for one.
func (f *fairSlots) load() (running, waiting int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, q := range f.waiting {
		waiting += len(q)
	}
	return f.running, waiting
}
