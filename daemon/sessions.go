package daemon

import (
	"slices"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// bootNoncesKept is how many of a keyed device's HELLO boot nonces are
// remembered to refuse a recorded HELLO played back (§9.3).
const bootNoncesKept = 16

// sessionTable is the open sessions by peer key, and the boot nonces of
// the keyed devices' recent HELLOs. Its lock is the one every frame's
// session lookup takes; nothing slow runs under it, and never a session's
// own lock (sessions are closed and cancelled after it is released).
type sessionTable struct {
	stats *Stats

	mu       sync.Mutex
	byPeer   map[string]*session
	bySource map[string]int // sessions per source (sourceKey)
	byDevice map[string]int // sessions per device id
	// Per keyed device, the boot nonces of its last admitted HELLOs, and
	// of the HELLOs refused since (BUSY, draining): a refused HELLO may be
	// sent again — a device retries after BUSY with the same boot nonce —
	// until one of the device's HELLOs is admitted; then they all count
	// as used, so none can be played back to tear down the new session.
	bootNonces map[string]*bootNonces
}

// bootNonces is one keyed device's record of HELLO boot nonces.
type bootNonces struct {
	used    []uint32 // admitted, or refused before an admission
	refused []uint32 // refused since the last admission: may be retried
}

func newSessionTable(stats *Stats) *sessionTable {
	return &sessionTable{stats: stats, byPeer: make(map[string]*session), bootNonces: make(map[string]*bootNonces),
		bySource: make(map[string]int), byDevice: make(map[string]int)}
}

// index counts s in (+1) or out (-1) of its source's and device id's
// sessions. Called with t.mu held, whenever byPeer gains or loses s.
func (t *sessionTable) index(s *session, n int) {
	for _, c := range []struct {
		m   map[string]int
		key string
	}{{t.bySource, s.source}, {t.byDevice, s.deviceID}} {
		if c.m[c.key] += n; c.m[c.key] <= 0 {
			delete(c.m, c.key)
		}
	}
}

// get returns the peer's session, or nil.
func (t *sessionTable) get(peerKey string) *session {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byPeer[peerKey]
}

// all returns the open sessions, in no order.
func (t *sessionTable) all() []*session {
	return t.filter(func(*session) bool { return true })
}

// filter returns the open sessions for which keep is true; keep runs under
// the table's lock and must not take a session's.
func (t *sessionTable) filter(keep func(*session) bool) []*session {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*session
	for _, s := range t.byPeer {
		if keep(s) {
			out = append(out, s)
		}
	}
	return out
}

// helloOutcome is what becomes of a HELLO that passed its checks.
type helloOutcome int

const (
	helloOpened     helloOutcome = iota // a new session (replacing old, if any)
	helloRepeated                       // a retransmitted HELLO: old is the session
	helloReplayed                       // an older HELLO of a keyed device, played back
	helloFull                           // MaxSessions reached, nobody to evict
	helloSourceFull                     // the source's MaxSessionsPerSource reached, none of its sessions to evict
	helloDeviceFull                     // the device id's MaxSessionsPerDevice reached, all of them busy
	helloDraining                       // the daemon is shutting down
	helloFailed                         // the session could not be made (err)
)

// helloResult is the table's decision on a HELLO.
type helloResult struct {
	outcome helloOutcome
	session *session // the new one (opened) or the existing one (repeated)
	old     *session // replaced by the new one: the caller closes it
	evicted *session // made room: the caller cancels it
	err     error
}

// helloRequest is a HELLO for the table to decide on.
type helloRequest struct {
	peerKey     string
	deviceID    string
	bootNonce   uint32
	keyed       bool   // the device has a key: its boot nonces are remembered
	source      string // sourceKey of the peer
	maxSessions int
	maxSource   int           // sessions per source; 0: no limit
	maxDevice   int           // sessions per device id; 0: no limit
	heartbeat   time.Duration // eviction: silent for longer is idle
	now         time.Time
	draining    func() bool
	create      func() (*session, error) // under the table's lock
}

// hello opens, repeats or replaces the peer's session (docs/protocol.md
// §10), in one critical section: a HELLO's fate depends on what is in the
// table, and the table must not change while it is decided.
func (t *sessionTable) hello(h helloRequest) helloResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.byPeer[h.peerKey]
	if old != nil && old.bootNonce == h.bootNonce && old.deviceID == h.deviceID {
		return helloResult{outcome: helloRepeated, session: old}
	}
	if h.keyed && t.seenBootNonce(h.deviceID, h.bootNonce) {
		// A recorded older HELLO must not tear down the live session (§9.3).
		return helloResult{outcome: helloReplayed}
	}
	var res helloResult
	defer func() { // the nonce counts as used only once admitted (§9.3)
		if h.keyed {
			t.noteBootNonce(h.deviceID, h.bootNonce, res.outcome == helloOpened)
		}
	}()
	if old == nil {
		// Room for the new session, from the narrowest bound out: the
		// device id's own sessions (a device back on a new port: its
		// oldest idle session goes), the source's, then the table's. At
		// most one session is evicted per HELLO.
		switch {
		case h.maxDevice > 0 && t.byDevice[h.deviceID] >= h.maxDevice:
			res.evicted = t.evict(h.now, h.heartbeat, h.source, func(s *session) bool { return s.deviceID == h.deviceID && !s.busy() })
			if res.evicted == nil {
				res.outcome = helloDeviceFull
				return res
			}
		case h.maxSource > 0 && t.bySource[h.source] >= h.maxSource:
			res.evicted = t.evict(h.now, h.heartbeat, h.source, func(s *session) bool { return s.source == h.source })
			if res.evicted == nil {
				res.outcome = helloSourceFull
				return res
			}
		}
		if len(t.byPeer) >= h.maxSessions {
			if ev := t.evictIdle(h.now, h.heartbeat, h.source); ev != nil {
				res.evicted = ev // at most one: the narrower bound evicted nobody then
			}
			if len(t.byPeer) >= h.maxSessions {
				res.outcome = helloFull
				return res
			}
		}
	}
	if h.draining() {
		res.outcome = helloDraining
		return res
	}
	s, err := h.create()
	if err != nil {
		res.outcome, res.err = helloFailed, err
		return res
	}
	t.byPeer[h.peerKey] = s
	if old == nil {
		t.opened(s)
	} else {
		t.index(old, -1)
	}
	t.index(s, 1)
	res.outcome, res.session, res.old = helloOpened, s, old
	return res
}

// seenBootNonce reports whether a keyed device's boot nonce n was used by
// an admitted HELLO, or by one refused before an admission. Called with
// t.mu held.
func (t *sessionTable) seenBootNonce(id string, n uint32) bool {
	r := t.bootNonces[id]
	return r != nil && slices.Contains(r.used, n)
}

// noteBootNonce records a keyed device's HELLO: admitted, its nonce and
// those of the HELLOs refused before it are used; refused, it may be
// retried. Called with t.mu held; the map holds only configured devices,
// and each ring at most bootNoncesKept nonces.
func (t *sessionTable) noteBootNonce(id string, n uint32, admitted bool) {
	r := t.bootNonces[id]
	if r == nil {
		r = &bootNonces{}
		t.bootNonces[id] = r
	}
	keep := func(ring []uint32, n uint32) []uint32 {
		if slices.Contains(ring, n) {
			return ring
		}
		ring = append(ring, n)
		if len(ring) > bootNoncesKept {
			ring = ring[len(ring)-bootNoncesKept:]
		}
		return ring
	}
	if !admitted {
		r.refused = keep(r.refused, n)
		return
	}
	for _, m := range append(r.refused, n) {
		r.used = keep(r.used, m)
	}
	r.refused = r.refused[:0]
}

// remove takes s out of the table, unless another session has taken its
// peer's place already.
func (t *sessionTable) remove(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byPeer[s.peer.Key()] == s {
		delete(t.byPeer, s.peer.Key())
		t.index(s, -1)
		t.closed(s)
	}
}

// opened and closed count a session in and out. Called with t.mu held.
func (t *sessionTable) opened(s *session) { t.stats.sessionOpened(s.peer.LinkName()) }
func (t *sessionTable) closed(s *session) { t.stats.sessionClosed(s.peer.LinkName()) }

// expire returns the sessions silent for longer than limit, for the caller
// to close, and drops stale reassembly state in the others.
func (t *sessionTable) expire(now time.Time, limit time.Duration) (expired []*session) {
	live := t.filter(func(s *session) bool {
		if now.Sub(s.lastSeen()) > limit {
			expired = append(expired, s)
			return false
		}
		return true
	})
	for _, s := range live { // a session's lock, outside the table's
		s.expireFragments(now)
	}
	return expired
}

// evict makes room for a new session among the sessions for which among
// is true (nil: all), and returns the session evicted, or nil when none
// may go. The order (victimRank): a session silent for more than a
// heartbeat (a device must send at least that often, §10) — not busy
// before busy; then a half-open one — a HELLO and nothing after, or
// fragments that never made a message, never a request —; then, when the
// table is full of served devices, an idle one from another source that
// holds several sessions (a crowding host yields to a new one). Never a device being served and talking: one with a
// request queued, running or streaming that is not silent, so a device
// is never evicted before its first answer. Ties go against the source
// holding the most sessions, then unkeyed before keyed, then the oldest.
// (Silent: more than a heartbeat; with a request, more than two — a device
// waiting for its answer keeps the session alive.) A flood of HELLOs or INFERs from one host therefore churns through its
// own sessions. Called with t.mu held; the caller cancels the returned
// session once t.mu is released.
func (t *sessionTable) evict(now time.Time, heartbeat time.Duration, from string, among func(*session) bool) *session {
	var victim *session
	var best victimRank
	for _, s := range t.byPeer {
		if among != nil && !among(s) {
			continue
		}
		r, ok := t.rank(s, now, heartbeat, from)
		if ok && (victim == nil || r.before(best)) {
			victim, best = s, r
		}
	}
	if victim == nil {
		return nil
	}
	delete(t.byPeer, victim.peer.Key())
	t.index(victim, -1)
	t.closed(victim)
	t.stats.Evicted.Add(1)
	return victim
}

// evictIdle makes room anywhere in the table for a HELLO from source from.
func (t *sessionTable) evictIdle(now time.Time, heartbeat time.Duration, from string) *session {
	return t.evict(now, heartbeat, from, nil)
}

// victimRank orders eviction candidates: lower class first, then more
// sessions from the same source, then unkeyed, then older.
type victimRank struct {
	class int
	crowd int // sessions of its source
	keyed bool
	since time.Time // last heard (silent class) or opened
}

func (a victimRank) before(b victimRank) bool {
	switch {
	case a.class != b.class:
		return a.class < b.class
	case a.crowd != b.crowd:
		return a.crowd > b.crowd
	case a.keyed != b.keyed:
		return !a.keyed
	}
	return a.since.Before(b.since)
}

// rank is s's place in the eviction order, or false when s must stay.
// Called with t.mu held.
func (t *sessionTable) rank(s *session, now time.Time, heartbeat time.Duration, from string) (victimRank, bool) {
	r := victimRank{crowd: t.bySource[s.source], keyed: s.verifier != nil, since: s.opened}
	busy, quiet := s.busy(), now.Sub(s.lastSeen())
	switch {
	case quiet > heartbeat && !busy:
		r.class, r.since = 0, s.lastSeen()
	case quiet > 2*heartbeat: // a device waiting for its answer still keeps alive
		r.class, r.since = 1, s.lastSeen()
	case busy:
		return r, false // being served and talking
	case !s.delivered.Load():
		r.class = 2 // half-open
	case r.crowd > 1 && s.source != from:
		r.class = 3 // served, idle, one of several from a host other than the newcomer's
	default:
		return r, false
	}
	return r, true
}

// helloRefusal is how a device hears a HELLO the table turned down.
func helloRefusal(r helloResult) *serialproto.Error {
	switch r.outcome {
	case helloReplayed:
		return serialproto.NewError(serialproto.CodeAuthFailed, "replayed HELLO")
	case helloFull:
		return serialproto.NewError(serialproto.CodeBusy, "too many sessions")
	case helloSourceFull:
		return serialproto.NewError(serialproto.CodeBusy, "too many sessions from this source")
	case helloDeviceFull:
		return serialproto.NewError(serialproto.CodeBusy, "too many sessions for this device")
	case helloDraining:
		return serialproto.NewError(serialproto.CodeShuttingDown, "shutting down")
	}
	return serialproto.NewError(serialproto.CodeInternal, r.err.Error())
}
