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

	mu     sync.Mutex
	byPeer map[string]*session
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
	return &sessionTable{stats: stats, byPeer: make(map[string]*session), bootNonces: make(map[string]*bootNonces)}
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
	helloOpened   helloOutcome = iota // a new session (replacing old, if any)
	helloRepeated                     // a retransmitted HELLO: old is the session
	helloReplayed                     // an older HELLO of a keyed device, played back
	helloFull                         // MaxSessions reached, nobody to evict
	helloDraining                     // the daemon is shutting down
	helloFailed                       // the session could not be made (err)
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
	keyed       bool // the device has a key: its boot nonces are remembered
	maxSessions int
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
	if old == nil && len(t.byPeer) >= h.maxSessions {
		res.evicted = t.evictIdle(h.now, h.heartbeat)
		if len(t.byPeer) >= h.maxSessions {
			res.outcome = helloFull
			return res
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
	}
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

// evictIdle makes room for a new session when the daemon is full. First
// choice: the session silent for longest, if it has been silent for more
// than a heartbeat (a device must send at least that often, §10) and runs
// no request. Second: the oldest half-open session — one whose device has
// never acknowledged a whole answer: a HELLO and nothing after, fragments
// that never made a message, or INFERs whose answers it never takes (its
// requests are cancelled). A flood of HELLOs or INFERs therefore churns
// through its own sessions and not through those of devices that are
// being served; a device that just connected is the youngest, so the last
// to go. Called with t.mu held; the caller cancels the returned session
// once t.mu is released.
func (t *sessionTable) evictIdle(now time.Time, heartbeat time.Duration) *session {
	var silent, halfOpen *session
	for _, s := range t.byPeer {
		if !s.delivered.Load() && (halfOpen == nil || s.opened.Before(halfOpen.opened)) {
			halfOpen = s
		}
		if now.Sub(s.lastSeen()) > heartbeat && !s.busy() && (silent == nil || s.lastSeen().Before(silent.lastSeen())) {
			silent = s
		}
	}
	victim := silent
	if victim == nil {
		victim = halfOpen
	}
	if victim == nil {
		return nil
	}
	delete(t.byPeer, victim.peer.Key())
	t.closed(victim)
	t.stats.Evicted.Add(1)
	return victim
}

// helloRefusal is how a device hears a HELLO the table turned down.
func helloRefusal(r helloResult) *serialproto.Error {
	switch r.outcome {
	case helloReplayed:
		return serialproto.NewError(serialproto.CodeAuthFailed, "replayed HELLO")
	case helloFull:
		return serialproto.NewError(serialproto.CodeBusy, "too many sessions")
	case helloDraining:
		return serialproto.NewError(serialproto.CodeShuttingDown, "shutting down")
	}
	return serialproto.NewError(serialproto.CodeInternal, r.err.Error())
}
