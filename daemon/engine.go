package daemon

import (
	"errors"
	"sync"

	"github.com/mcpd-project/mcpd/backends"
)

// The engine new requests go to, and the engines they left behind: a
// swapped-out engine keeps serving the requests already on it and is
// reported idle once the last of them is done.

// engineRef counts the requests using one engine, so that a replaced engine
// is closed only once the last of them is done with it.
type engineRef struct {
	b backends.Backend

	mu      sync.Mutex
	users   int
	retired bool
	idle    chan struct{} // closed when retired and unused
}

// acquireEngine returns the current engine, counted as in use until release.
func (d *Daemon) acquireEngine() *engineRef {
	for {
		e := d.engine.Load()
		e.mu.Lock()
		if !e.retired {
			e.users++
			e.mu.Unlock()
			return e
		}
		e.mu.Unlock() // swapped out between Load and Lock: take the new one
	}
}

func (e *engineRef) release() {
	e.mu.Lock()
	e.users--
	if e.retired && e.users == 0 {
		close(e.idle)
	}
	e.mu.Unlock()
}

// backend is the engine new requests go to.
func (d *Daemon) backend() backends.Backend { return d.engine.Load().b }

// Backend returns the engine new requests go to.
func (d *Daemon) Backend() backends.Backend { return d.backend() }

// SwapBackend sends new requests to b. Requests running on the old engine
// finish there; the returned channel is closed once none is left, and the
// caller then closes the old engine.
func (d *Daemon) SwapBackend(b backends.Backend) (old backends.Backend, idle <-chan struct{}, err error) {
	if b == nil {
		return nil, nil, errors.New("daemon: no backend")
	}
	e := d.engine.Swap(&engineRef{b: b})
	e.mu.Lock()
	defer e.mu.Unlock()
	e.retired = true
	e.idle = make(chan struct{})
	if e.users == 0 {
		close(e.idle)
	}
	return e.b, e.idle, nil
}
