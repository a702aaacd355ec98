package daemon

import (
	"context"
	"math"
	"slices"
	"strings"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Snapshot is the daemon's state at one moment, for the status endpoint
// and the metrics collector: cheap to take (one lock, no I/O besides the
// backend's Healthy and Model calls), safe to encode as JSON.
type Snapshot struct {
	State         string        `json:"state"` // ready, draining, unavailable, stopped
	StateReason   string        `json:"state_reason,omitempty"`
	Backend       string        `json:"backend"`
	Model         string        `json:"model"`
	Links         []string      `json:"links"`
	LinkStates    []LinkState   `json:"link_states"` // per port for serial links
	LinksUp       int           `json:"links_up"`
	Sessions      []SessionInfo `json:"sessions"`
	Running       int           `json:"running"`        // requests holding an engine slot
	Queued        int           `json:"queued"`         // accepted, waiting for a slot
	LocalRequests int           `json:"local_requests"` // of those, from local applications
	MaxConcurrent int           `json:"max_concurrent"`
	MaxQueue      int           `json:"max_queue"`
	Counters      Counters      `json:"counters"`
	// Cache is what the engines reuse (docs/caching.md): the response
	// cache's counters when it is on, and the KV cache's prompt reuse.
	Cache *backends.CacheStats `json:"cache,omitempty"`
	// TokensGenerated is every engine's output since the start; the status
	// page's tokens/s chart is drawn from its differences.
	TokensGenerated int64 `json:"tokens_generated"`
}

// SessionInfo is one device's session.
type SessionInfo struct {
	Device   string  `json:"device"`
	Link     string  `json:"link"`
	Peer     string  `json:"peer"`
	Signed   bool    `json:"signed"`
	Active   int     `json:"active_requests"`
	MaxData  int     `json:"max_data"`
	Window   int     `json:"window"`
	IdleSecs float64 `json:"idle_s"`
}

// Snapshot returns the daemon's state now.
func (d *Daemon) Snapshot(ctx context.Context) Snapshot {
	now := d.clock.Now()
	cfg := d.conf()
	open := d.sessions.all()
	snap := Snapshot{
		Links:         d.links.names(),
		LinkStates:    d.LinkStates(),
		Sessions:      make([]SessionInfo, 0, len(open)),
		MaxConcurrent: cfg.MaxConcurrent,
		MaxQueue:      cfg.MaxQueue,
		Backend:       d.backend().Name(),
	}
	for _, s := range open {
		snap.Sessions = append(snap.Sessions, SessionInfo{
			Device: s.deviceID, Link: s.peer.LinkName(), Peer: s.peer.Key(), Signed: s.verifier != nil,
			Active: s.places.count(), MaxData: s.maxData, Window: s.window,
			IdleSecs: now.Sub(s.lastSeen()).Seconds(),
		})
	}
	slices.SortFunc(snap.Sessions, func(a, b SessionInfo) int { return strings.Compare(a.Peer, b.Peer) })
	for _, l := range snap.LinkStates {
		if l.Up {
			snap.LinksUp++
		}
	}
	snap.Running, snap.Queued = d.admission.load()
	snap.LocalRequests = d.local.count()
	snap.Counters = d.stats.Counters()
	for _, n := range d.stats.Tokens() {
		snap.TokensGenerated += n
	}
	if r, ok := d.backend().(backends.CacheReporter); ok {
		st := r.CacheStats()
		snap.Cache = &st
	}
	if info, err := d.backend().Model(ctx, ""); err == nil {
		snap.Model = info.Name
	}
	switch {
	case !d.links.serving():
		snap.State = "stopped"
	case d.admission.isDraining():
		snap.State = "draining"
	default:
		snap.State = "ready"
		if err := d.backend().Healthy(ctx); err != nil {
			snap.State, snap.StateReason = "unavailable", err.Error()
		}
	}
	return snap
}

// status answers STATUS (docs/protocol.md §11.11); ext: the session
// negotiated STATUS_EXT, and the reply carries the cache figures.
func (d *Daemon) status(ext bool) *serialproto.StatusReply {
	ctx := d.links.context()
	engine := d.backend()
	state := serialproto.StateReady
	if d.admission.isDraining() {
		state = serialproto.StateDraining
	} else if err := engine.Healthy(ctx); err != nil {
		state = serialproto.StateUnavailable
	} else if dg, ok := engine.(backends.DegradedReporter); ok && dg.Degraded() {
		state = serialproto.StateDegraded // serving, on a fallback engine or with an Ollama endpoint down
	}
	running, queued := d.admission.load()
	model := ""
	if info, err := engine.Model(ctx, ""); err == nil {
		model = info.Name
	}
	reply := &serialproto.StatusReply{
		State: state, LoadPct: uint8(100 * running / d.conf().MaxConcurrent), Queue: uint8(min(queued, 255)),
		Backend: engine.Name(), Model: model, Extended: ext,
	}
	if r, ok := engine.(backends.CacheReporter); ok && ext {
		st := r.CacheStats()
		if st.KV.Engines > 0 {
			reply.KV = cacheFigures(st.KV.Hits, st.KV.Misses, st.KV.Evictions, st.KV.Bytes)
		}
		if st.Budget > 0 { // the response cache is on
			reply.Responses = cacheFigures(st.Hits, st.Misses, st.Evictions, st.Bytes)
		}
	}
	return reply
}

// cacheFigures puts a cache's counters in STATUS_REPLY's field, where
// they stop at 2³²−1.
func cacheFigures(hits, misses, evictions, bytes int64) *serialproto.CacheFigures {
	sat := func(n int64) uint32 { return uint32(min(max(n, 0), math.MaxUint32)) }
	return &serialproto.CacheFigures{Hits: sat(hits), Misses: sat(misses), Evictions: sat(evictions), Bytes: uint64(max(bytes, 0))}
}
