// Package daemon is mcpd's service: links (UDP, serial) carry MCPFrames from
// devices, sessions hold each device's state, and requests are dispatched
// to a backends.Backend whose output streams back under the protocol's
// flow control (docs/protocol.md).
package daemon

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Causes of a request's cancellation, mapped to protocol error codes.
var (
	errCancelledByDevice = errors.New("daemon: cancelled by the device")
	errSessionClosed     = errors.New("daemon: session closed")
	errShuttingDown      = errors.New("daemon: shutting down")
)

// Stats are the daemon's counters.
type Stats struct {
	FramesIn, FramesOut, BadFrames         atomic.Int64
	AuthFailures                           atomic.Int64 // unsigned, bad tag, replayed or stale frames
	Sessions                               atomic.Int64 // open now
	Accepted, Busy, Done, Failed, Canceled atomic.Int64
	Duplicates                             atomic.Int64 // retransmitted requests answered again
	// AuthFailures by reason (§9.2).
	AuthUnsigned, AuthBadTag, AuthReplay, AuthStale atomic.Int64
	RateLimited                                     atomic.Int64 // frames over a source's rate, dropped
	Forbidden                                       atomic.Int64 // HELLOs and INFERs the policy refused
	Evicted                                         atomic.Int64 // idle sessions closed to make room
	Retransmits                                     atomic.Int64 // stream chunks sent again
}

// Daemon dispatches devices' requests to a backend.
type Daemon struct {
	cfg    atomic.Pointer[Config]    // replaced whole by Reconfigure (runtime.go)
	engine atomic.Pointer[engineRef] // replaced by SwapBackend (runtime.go)
	log    *slog.Logger
	stats  Stats
	obs    Observer // nil: nothing observes (observe.go)
	live   liveness // what the watchdog asks about (liveness.go)

	slots atomic.Pointer[chan struct{}] // one token per running request; replaced by Reconfigure

	admitted  atomic.Int64 // accepted requests still queued or generating
	streaming atomic.Int64 // requests whose answer is still being delivered
	draining  atomic.Bool

	mu         sync.Mutex
	sessions   map[string]*session
	bootNonces map[string][]uint32     // per keyed device, its last 16 HELLO boot nonces (§9.3)
	linkCtx    context.Context         // lives until the drain is over
	limiter    peerLimiter             // per-source rate limit (guard.go)
	budgets    budgets                 // per-device token budgets (guard.go)
	links      map[string]*runningLink // the links being served (links.go)
	linkErrs   chan error              // the first link that fails for good ends Run
	started    chan struct{}           // closed once Run serves its links
	local      localRequests           // requests of local applications (local.go)
}

// New returns a daemon serving through b.
func New(cfg Config, b backends.Backend, log *slog.Logger) (*Daemon, error) {
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
		log:        log,
		sessions:   make(map[string]*session),
		bootNonces: make(map[string][]uint32),
		limiter:    peerLimiter{rate: cfg.PeerRate, burst: float64(cfg.PeerBurst), max: cfg.MaxPeers},
		links:      make(map[string]*runningLink),
		linkErrs:   make(chan error, 1),
		started:    make(chan struct{}),
	}
	d.cfg.Store(&cfg)
	d.engine.Store(&engineRef{b: b})
	slots := make(chan struct{}, cfg.MaxConcurrent)
	d.slots.Store(&slots)
	return d, nil
}

// Stats returns the live counters.
func (d *Daemon) Stats() *Stats { return &d.stats }

// Run serves the links until ctx is done, then drains: new requests are
// refused with SHUTTING_DOWN, in-flight ones may finish for ShutdownDrain,
// the rest end with ERROR SHUTTING_DOWN. It returns the first link error
// that is not caused by the shutdown.
func (d *Daemon) Run(ctx context.Context, links ...Link) error {
	if len(links) == 0 {
		return errors.New("daemon: no links to serve")
	}
	linkCtx, stopLinks := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLinks()
	d.mu.Lock()
	d.linkCtx = linkCtx
	d.mu.Unlock()

	for _, l := range links {
		if err := d.AddLink(l); err != nil {
			stopLinks()
			return err
		}
	}
	go d.janitor(linkCtx)
	close(d.started)

	var linkErr error
	select {
	case <-ctx.Done():
	case linkErr = <-d.linkErrs:
	}
	d.drain()
	stopLinks()
	return linkErr
}

// drain refuses new work and gives in-flight requests time to finish.
func (d *Daemon) drain() {
	d.draining.Store(true)
	if d.waitIdle(d.conf().ShutdownDrain) {
		return
	}
	d.log.Warn("drain deadline passed; ending the remaining requests", "requests", d.admitted.Load())
	d.mu.Lock()
	for _, s := range d.sessions {
		s.cancelRequests(errShuttingDown)
	}
	d.mu.Unlock()
	d.local.cancelAll(errShuttingDown)
	d.waitIdle(time.Second) // a moment for the final ERROR frames to go out
}

// waitIdle polls until no request is in flight or the timeout passes; a
// shutdown is rare enough that polling beats more shared state.
func (d *Daemon) waitIdle(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for d.admitted.Load() > 0 || d.streaming.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// janitor expires silent sessions and stale reassembly state.
func (d *Daemon) janitor(ctx context.Context) {
	tick := time.NewTicker(max(d.conf().Heartbeat/4, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			d.mu.Lock()
			open := slices.Collect(maps.Values(d.sessions))
			d.mu.Unlock()
			for _, s := range open { // close takes d.mu itself
				s.close(errSessionClosed)
			}
			return
		case now := <-tick.C:
			var expired []*session
			d.mu.Lock()
			for _, s := range d.sessions {
				if now.Sub(s.lastSeen()) > 3*d.conf().Heartbeat {
					expired = append(expired, s)
				} else {
					s.expireFragments(now)
				}
			}
			d.mu.Unlock()
			d.live.beat(now) // the lock every frame takes is not stuck
			for _, s := range expired {
				d.log.Info("session expired", "device", s.deviceID, "peer", s.peer.Key())
				s.close(errSessionClosed)
			}
		}
	}
}

// HandleBadFrame counts a rejected frame; on a serial line the sender
// learns of it through NACK BAD_FRAME (docs/protocol.md §7.1).
func (d *Daemon) HandleBadFrame(p Peer, err error) {
	d.stats.BadFrames.Add(1)
	if !d.allowPeer(p, 0, false) {
		return
	}
	if d.obs != nil {
		d.obs.BadFrame(p.LinkName(), err)
	}
	if !p.ByteStream() {
		return
	}
	if s := d.session(p.Key()); s != nil && !s.allowNack(time.Now()) {
		return
	}
	d.send(p, 0, &serialproto.Nack{Reason: serialproto.NackBadFrame})
}

// HandleFrame is the entry point of every sound frame.
func (d *Daemon) HandleFrame(p Peer, f serialproto.Frame) {
	d.stats.FramesIn.Add(1)
	d.observeFrame(p, FrameIn, f.Cmd)
	if !d.allowPeer(p, f.Seq, true) {
		return
	}
	switch {
	case f.Version != serialproto.Version1:
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeUnsupportedVersion, "versions 1..1"))
		return
	case !f.Cmd.Known():
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeUnknownCommand, f.Cmd.String()))
		return
	case f.Cmd == serialproto.CmdHello:
		d.hello(p, f)
		return
	}
	s := d.session(p.Key())
	if s == nil {
		if f.Cmd == serialproto.CmdBye {
			d.send(p, f.Seq, &serialproto.Bye{})
		} else {
			d.send(p, f.Seq, serialproto.NewError(serialproto.CodeNoSession, "send HELLO first"))
		}
		return
	}
	s.handle(f)
}

func (d *Daemon) session(key string) *session {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sessions[key]
}

// hello opens, repeats or replaces a session (docs/protocol.md §10), and
// applies the device's key (§9.4).
func (d *Daemon) hello(p Peer, f serialproto.Frame) {
	var h serialproto.Hello
	if f.Flags&serialproto.FlagFragment != 0 {
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeMalformed, "HELLO cannot be fragmented"))
		return
	}
	signed := f.Flags&serialproto.FlagSigned != 0
	body := f.Data
	if signed {
		if len(body) < serialproto.SignatureLen {
			d.send(p, f.Seq, serialproto.NewError(serialproto.CodeMalformed, "signed HELLO without a signature block"))
			return
		}
		body = body[:len(body)-serialproto.SignatureLen]
	}
	if err := h.UnmarshalBody(body); err != nil {
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeMalformed, err.Error()))
		return
	}
	key, keyed := d.conf().Keys[h.DeviceID]
	switch {
	case keyed && !signed:
		d.countAuth(serialproto.ErrUnsigned)
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeAuthRequired, "this device must sign"))
		return
	case signed && !keyed:
		d.countAuth(serialproto.ErrBadTag)
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeAuthFailed, "no key for this device"))
		return
	case signed:
		// The HELLO's own MAC uses boot_nonce ‖ 0 (§9.1); its body is
		// trusted only once that checks out.
		v, err := serialproto.NewVerifier(key, serialproto.DeviceToDaemon, serialproto.MakeNonce(h.BootNonce, 0))
		if err == nil {
			_, _, _, err = v.Verify(f)
		}
		if err == nil && h.Features&serialproto.FeatureSign == 0 {
			err = errors.New("signed HELLO without the SIGN feature")
		}
		if err != nil {
			d.countAuth(err)
			d.log.Info("HELLO rejected", "device", h.DeviceID, "reason", err)
			d.send(p, f.Seq, serialproto.NewError(serialproto.CodeAuthFailed, "HELLO signature rejected"))
			return
		}
	}
	if h.MinVersion > serialproto.Version1 {
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeUnsupportedVersion, "versions 1..1"))
		return
	}
	if e := d.admitPeer(p, h.DeviceID); e != nil {
		d.stats.Forbidden.Add(1)
		d.observeRefused(p.LinkName(), e.Code)
		d.log.Info("HELLO refused by policy", "device", h.DeviceID, "peer", p.Key(), "reason", e.Text)
		d.send(p, f.Seq, e)
		return
	}
	peerKey := p.Key()
	d.mu.Lock()
	old := d.sessions[peerKey]
	if old != nil && old.bootNonce == h.BootNonce && old.deviceID == h.DeviceID {
		d.mu.Unlock()
		d.stats.Duplicates.Add(1)
		old.touch()
		old.send(f.Seq, old.welcome()) // a retransmitted HELLO
		return
	}
	if keyed && d.seenBootNonce(h.DeviceID, h.BootNonce) {
		// An older HELLO of this device, recorded and played back: it must
		// not tear down the live session (§9.3).
		d.mu.Unlock()
		d.countAuth(serialproto.ErrReplay)
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeAuthFailed, "replayed HELLO"))
		return
	}
	var evicted *session
	if old == nil && len(d.sessions) >= d.conf().MaxSessions {
		evicted = d.evictIdle(time.Now())
	}
	if evicted != nil {
		defer evicted.cancel(errSessionClosed) // after d.mu is released
	}
	if old == nil && len(d.sessions) >= d.conf().MaxSessions {
		d.mu.Unlock()
		d.observeRefused(p.LinkName(), serialproto.CodeBusy)
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeBusy, "too many sessions"))
		return
	}
	if d.draining.Load() {
		d.mu.Unlock()
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeShuttingDown, "shutting down"))
		return
	}
	s, err := newSession(d, d.linkCtx, p, &h, f.Seq, randomNonce(), key)
	if err != nil {
		d.mu.Unlock()
		d.send(p, f.Seq, serialproto.NewError(serialproto.CodeInternal, err.Error()))
		return
	}
	d.sessions[peerKey] = s
	d.mu.Unlock()
	if old != nil {
		old.close(errSessionClosed)
	} else {
		d.stats.Sessions.Add(1)
		if d.obs != nil {
			d.obs.SessionOpened(p.LinkName())
		}
	}
	d.log.Info("session opened", "device", h.DeviceID, "peer", peerKey, "max_data", h.MaxData, "window", h.Window, "signed", keyed)
	s.send(f.Seq, s.welcome())
}

// seenBootNonce reports whether a keyed device used boot nonce n in one of
// its last 16 HELLOs, and records it. Called with d.mu held; the map holds
// only configured devices.
func (d *Daemon) seenBootNonce(id string, n uint32) bool {
	ring := d.bootNonces[id]
	if slices.Contains(ring, n) {
		return true
	}
	ring = append(ring, n)
	if len(ring) > 16 {
		ring = ring[1:]
	}
	d.bootNonces[id] = ring
	return false
}

func (d *Daemon) removeSession(s *session) {
	d.mu.Lock()
	if d.sessions[s.peer.Key()] == s {
		delete(d.sessions, s.peer.Key())
		d.stats.Sessions.Add(-1)
		if d.obs != nil {
			d.obs.SessionClosed(s.peer.LinkName())
		}
	}
	d.mu.Unlock()
}

// admit reserves a place for a request, or reports that the daemon is full.
func (d *Daemon) admit() bool {
	for {
		n := d.admitted.Load()
		if n >= int64(d.conf().MaxConcurrent+d.conf().MaxQueue) {
			return false
		}
		if d.admitted.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (d *Daemon) release() { d.admitted.Add(-1) }

// send answers a peer that has no session (yet): its data limit is
// unknown, so the smallest one any device may have is assumed, and there is
// no session to sign in (§9.2).
func (d *Daemon) send(p Peer, seq uint8, m serialproto.Message) {
	d.sendTo(p, seq, serialproto.MinDataLimit, nil, m)
}

// sendTo encodes m in one frame to p, cutting texts to fit the peer's data
// limit. Errors are logged, not returned: a device that vanished is
// handled by session expiry.
func (d *Daemon) sendTo(p Peer, seq uint8, limit int, seal *sealer, m serialproto.Message) {
	switch m := m.(type) {
	case *serialproto.Error:
		m.Fit(serialproto.BodyLimit(limit, seal.signed()))
	case *serialproto.StatusReply:
		m.Fit(serialproto.BodyLimit(limit, seal.signed()))
	}
	body, err := m.AppendBody(make([]byte, 0, 64))
	if err != nil {
		d.log.Error("encoding a reply", "cmd", m.Command(), "err", err)
		return
	}
	frame, err := seal.seal(serialproto.Frame{Version: serialproto.Version1, Cmd: m.Command(), Seq: seq, Data: body})
	if err != nil {
		d.log.Error("encoding a reply", "cmd", m.Command(), "err", err)
		return
	}
	if err := p.Send(frame); err != nil {
		d.log.Debug("send failed", "peer", p.Key(), "err", err)
		return
	}
	d.stats.FramesOut.Add(1)
	d.observeFrame(p, FrameOut, m.Command())
}

func randomNonce() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
	return binary.BigEndian.Uint32(b[:])
}

// status answers STATUS (docs/protocol.md §11.11).
func (d *Daemon) status() *serialproto.StatusReply {
	state := serialproto.StateReady
	if d.draining.Load() {
		state = serialproto.StateDraining
	} else if err := d.backend().Healthy(d.linkCtx); err != nil {
		state = serialproto.StateUnavailable
	} else if dg, ok := d.backend().(backends.DegradedReporter); ok && dg.Degraded() {
		state = serialproto.StateDegraded // serving, on a fallback engine or with an Ollama endpoint down
	}
	running := len(*d.slots.Load())
	queued := max(int(d.admitted.Load())-running, 0)
	model := ""
	if info, err := d.backend().Model(d.linkCtx, ""); err == nil {
		model = info.Name
	}
	return &serialproto.StatusReply{
		State: state, LoadPct: uint8(100 * running / d.conf().MaxConcurrent), Queue: uint8(min(queued, 255)),
		Backend: d.backend().Name(), Model: model,
	}
}

// countAuth counts a rejected frame by the reason of §9.2.
func (d *Daemon) countAuth(err error) {
	d.stats.AuthFailures.Add(1)
	switch {
	case errors.Is(err, serialproto.ErrUnsigned):
		d.stats.AuthUnsigned.Add(1)
	case errors.Is(err, serialproto.ErrReplay):
		d.stats.AuthReplay.Add(1)
	case errors.Is(err, serialproto.ErrStale):
		d.stats.AuthStale.Add(1)
	default:
		d.stats.AuthBadTag.Add(1)
	}
}
