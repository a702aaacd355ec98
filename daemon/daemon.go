// Package daemon is mcpd's service: links (UDP, serial) carry MCPFrames from
// devices, sessions hold each device's state, and requests are dispatched
// to a backends.Backend whose output streams back under the protocol's
// flow control (docs/protocol.md).
//
// The Daemon is assembled from parts with one job each (docs/daemon.md):
// frame intake and authentication (intake.go, auth.go), the session table
// (sessions.go), admission — slots, queue, per-device places and token
// budgets (admission.go) —, the counters (stats.go), the links being
// served (links.go), reload and engine swap (reload.go, engine.go), the
// watchdog's liveness (liveness.go) and the conversations kept for devices
// to resume (chats.go).
package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
)

// Causes of a request's cancellation, mapped to protocol error codes.
var (
	errCancelledByDevice = errors.New("daemon: cancelled by the device")
	errSessionClosed     = errors.New("daemon: session closed")
	errShuttingDown      = errors.New("daemon: shutting down")
	// errSuperseded: the device sent a new request under the request's seq
	// (256 requests later), so it has long forgotten this one (§5).
	errSuperseded = errors.New("daemon: a new request took its seq")
)

// Daemon dispatches devices' requests to a backend.
type Daemon struct {
	log    *slog.Logger
	clock  clock
	cfg    atomic.Pointer[Config]    // replaced whole by Reconfigure (reload.go)
	engine atomic.Pointer[engineRef] // replaced by SwapBackend (engine.go)
	stats  Stats                     // the counters (stats.go)
	obs    Observer                  // nil: nothing observes (observe.go)
	live   liveness                  // what the watchdog asks about (liveness.go)

	admission *admission    // who may run: slots, queue, places, budgets
	sessions  *sessionTable // the devices' sessions by peer
	limiter   peerLimiter   // per-source rate limit (guard.go)
	sampler   logSampler    // bounds the log lines remote peers cause (logsample.go)
	reqLines  logSampler    // bounds the request lines of remote links (reqlog.go)
	links     linkSet       // the links being served, and their lifetime
	local     localRequests // local applications' requests (local.go)
	tools     toolStore     // devices' tool declarations by device id (tools.go)
	chats     chatStore     // conversations kept for devices to resume (chats.go)
	saveWake  chan struct{} // Reconfigure wakes the saver when an interval changed (saver.go)
}

// New returns a daemon serving through b.
func New(cfg Config, b backends.Backend, log *slog.Logger) (*Daemon, error) {
	return newDaemon(cfg, b, log, systemClock{})
}

// newDaemon is New with the clock given: tests pass a fake one.
func newDaemon(cfg Config, b backends.Backend, log *slog.Logger, clk clock) (*Daemon, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if b == nil {
		return nil, errors.New("daemon: no backend")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{
		log:      log,
		clock:    clk,
		limiter:  peerLimiter{rate: cfg.PeerRate, burst: float64(cfg.PeerBurst), max: cfg.MaxPeers},
		links:    newLinkSet(),
		saveWake: make(chan struct{}, 1),
	}
	d.cfg.Store(&cfg)
	d.engine.Store(&engineRef{b: b})
	d.live.clock = clk
	d.admission = newAdmission(d.conf, clk, &d.stats)
	d.sessions = newSessionTable(&d.stats)
	return d, nil
}

// Stats returns the live counters.
func (d *Daemon) Stats() *Stats { return &d.stats }

// Run serves the links until ctx is done, then drains: new requests are
// refused with SHUTTING_DOWN, in-flight ones may finish for ShutdownDrain,
// the rest end with ERROR SHUTTING_DOWN. It returns the first link error
// that is not caused by the shutdown, once every session is closed.
func (d *Daemon) Run(ctx context.Context, links ...Link) error {
	if len(links) == 0 {
		return errors.New("daemon: no links to serve")
	}
	d.loadChats() // before the first HELLO
	linkCtx, stopLinks := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLinks()
	d.links.begin(linkCtx)
	for _, l := range links {
		if err := d.AddLink(l); err != nil {
			stopLinks()
			return err
		}
	}
	janitorDone, saverDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(janitorDone)
		d.janitor(linkCtx)
	}()
	go func() {
		defer close(saverDone)
		d.saver(linkCtx)
	}()
	close(d.links.started)

	var linkErr error
	select {
	case <-ctx.Done():
	case linkErr = <-d.links.errs:
	}
	d.drain()
	stopLinks()
	<-janitorDone // it closes the sessions left, keeping their conversations
	<-saverDone
	d.SaveChats()
	return linkErr
}

// StopAccepting makes the daemon refuse new sessions and requests from now
// on (SHUTTING_DOWN), as Run does when its context ends, while what runs
// goes on. A service announcing its stop calls it first, so that what it
// announces holds from then on: Run sees its context end on a goroutine of
// its own, a moment later, and a HELLO in that moment was still taken.
func (d *Daemon) StopAccepting() { d.admission.drain() }

// drain refuses new work and gives in-flight requests time to finish.
func (d *Daemon) drain() {
	d.admission.drain()
	if d.admission.waitIdle(d.conf().ShutdownDrain) {
		return
	}
	d.log.Warn("drain deadline passed; ending the remaining requests", "requests", d.admission.queued.Load())
	for _, s := range d.sessions.all() {
		s.cancelRequests(errShuttingDown)
	}
	d.local.cancelAll(errShuttingDown)
	d.admission.waitIdle(time.Second) // a moment for the final ERROR frames to go out
}

// janitor expires silent sessions and stale reassembly state, and tells
// the liveness check that the session table's lock is not stuck. When ctx
// ends it closes the sessions left.
func (d *Daemon) janitor(ctx context.Context) {
	tick := d.clock.NewTicker(max(d.conf().Heartbeat/4, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, s := range d.sessions.all() {
				s.close(errSessionClosed)
			}
			return
		case now := <-tick.C():
			expired := d.sessions.expire(now, 3*d.conf().Heartbeat)
			d.live.beat(now) // the lock every frame takes is not stuck
			for _, s := range expired {
				d.remoteLog(slog.LevelInfo, "session expired", "device", s.deviceID, "peer", s.peer.Key())
				s.close(errSessionClosed)
			}
		}
	}
}
