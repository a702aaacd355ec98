package daemon

import (
	"errors"
	"sync"

	"github.com/mcpd-project/mcpd/backends"
)

// Changing a running daemon (a service reload): new limits and keys, a new
// engine, links added and removed (links.go) — without dropping the sessions
// that the change does not concern.

// conf is the configuration in force now. Read it once per decision: a
// reload may replace it between two calls.
func (d *Daemon) conf() *Config { return d.cfg.Load() }

// Config returns the configuration in force, defaults applied.
func (d *Daemon) Config() Config { return *d.conf() }

// Reconfigure puts cfg in force. Requests already accepted keep the limits
// they started under (their deadline, their engine slot); new ones get the
// new limits. A HELLO is judged by the new keys, and a device whose key was
// added, changed or removed has its session closed: it must sign (or stop
// signing) from its next HELLO on. Sessions above a lowered MaxSessions stay
// until they end; only new ones are refused.
func (d *Daemon) Reconfigure(cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	old := d.cfg.Swap(&cfg)
	if cfg.MaxConcurrent != old.MaxConcurrent {
		// Requests holding a slot give it back to the old pool.
		slots := make(chan struct{}, cfg.MaxConcurrent)
		d.slots.Store(&slots)
	}
	var rekeyed []*session
	d.mu.Lock()
	for _, s := range d.sessions {
		was, had := old.Keys[s.deviceID]
		now, has := cfg.Keys[s.deviceID]
		if had != has || (has && !was.Equal(now)) {
			rekeyed = append(rekeyed, s)
		}
	}
	d.mu.Unlock()
	for _, s := range rekeyed {
		d.log.Info("session closed: the device's key changed", "device", s.deviceID)
		s.close(errSessionClosed)
	}
	return nil
}

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
