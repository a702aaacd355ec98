package daemon

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// rememberedRequests is how many INFER seqs a session remembers so that a
// retransmitted INFER is answered again instead of running twice
// (docs/protocol.md §5).
const rememberedRequests = 32

// session is one device on one link (docs/protocol.md §10).
type session struct {
	d           *Daemon
	peer        Peer
	deviceID    string
	source      string // sourceKey(peer): the per-source limits' key
	bootNonce   uint32
	daemonNonce uint32
	maxData     int // the device's
	window      int
	sack        bool      // the device acknowledges selectively (§8.2); granted in WELCOME
	statusExt   bool      // the device reads the extended STATUS_REPLY (§11.11); granted in WELCOME
	rtt         *rttState // round-trip estimate towards the device (§7.2), shared by its streams
	ctx         context.Context
	cancel      context.CancelCauseFunc
	seen        atomic.Int64          // unix nanoseconds of the last frame, on the daemon's clock
	seal        *sealer               // signs what we send when the device has a key
	verifier    *serialproto.Verifier // checks what it sends; nil in an unsigned session
	opened      time.Time             // for eviction of half-open sessions (sessions.go)
	delivered   atomic.Bool           // the device acknowledged a whole answer (sessions.go)
	places      places                // its admitted requests, at most MaxPerSession (admission.go)
	owner       string                // who may resume its conversation (chats.go); "" nobody
	keyCheck    [16]byte              // its signing key's fingerprint, zero unsigned
	resumed     atomic.Bool           // it began with a kept conversation: WELCOME says RESUME

	mu          sync.Mutex
	lastAuthErr time.Time // AUTH_FAILED answers are rate-limited (§9.2)
	reasm       *serialproto.Reassembler
	requests    map[uint8]*request
	order       []uint8                // seqs of requests, oldest first
	seqs        serialproto.SeqHistory // the device's request seqs (§5), from the HELLO's on
	gaps        map[gapKey]*gap        // messages in reassembly: their NACK MISSING state (gap.go)
	history     []backends.Message
	lastNack    time.Time
	// firstFrag holds when the first fragment of each INFER in reassembly
	// arrived, for the request's trace; kept only while observed.
	firstFrag map[uint8]time.Time
}

func newSession(d *Daemon, parent context.Context, p Peer, h *serialproto.Hello, helloSeq uint8, nonce uint32, key serialproto.Key) (*session, error) {
	ctx, cancel := context.WithCancelCause(parent)
	cfg := d.conf()
	s := &session{
		d: d, peer: p, deviceID: h.DeviceID, source: sourceKey(p), bootNonce: h.BootNonce, daemonNonce: nonce,
		maxData: int(h.MaxData), window: int(h.Window),
		sack: h.Features&serialproto.FeatureSACK != 0,
		// The extended STATUS_REPLY only to a device that reads it (§11.11).
		statusExt: h.Features&serialproto.FeatureStatusExt != 0,
		rtt:       newRTTState(p.RTO(int(h.Window)), minRTO(p, int(h.Window), cfg.MinRTO)),
		ctx:       ctx, cancel: cancel,
		reasm:    serialproto.NewReassembler(serialproto.ReassemblerConfig{MaxMessage: cfg.MaxMessage, MaxPending: cfg.MaxPendingPerPeer}),
		requests: make(map[uint8]*request),
		seqs:     serialproto.NewSeqHistory(helloSeq),
	}
	if !key.IsZero() {
		n := serialproto.MakeNonce(h.BootNonce, nonce)
		var err error
		if s.seal, err = newSealer(key, n); err != nil {
			return nil, err
		}
		if s.verifier, err = serialproto.NewVerifier(key, serialproto.DeviceToDaemon, n); err != nil {
			return nil, err
		}
	}
	s.owner, s.keyCheck = chatOwner(p, h.DeviceID, key, cfg.ResumeUnsigned)
	s.touch()
	s.opened = d.clock.Now()
	return s, nil
}

// fresh applies the freshness rule of §5 (serialproto.SeqHistory) to a
// request the device originates, and notes its seq. A seq after the newest
// starts a new request, so whatever an old request with the same seq (256
// requests ago, PINGs included) left behind is forgotten: it must run, not
// be mistaken for a retransmission. PING, STATUS and BYE are answered at
// once and taken now; an INFER is taken when it is accepted (newRequest),
// so a refused one is judged again when its retransmission comes.
func (s *session) fresh(cmd serialproto.Command, seq uint8) serialproto.SeqState {
	s.mu.Lock()
	defer s.mu.Unlock()
	state := s.seqs.Classify(seq)
	if state == serialproto.SeqStale {
		return state
	}
	if s.seqs.Advance(seq) {
		if r := s.requests[seq]; r != nil {
			// Still streaming 256 requests later (its final ACK lost, the
			// device long past it): its chunks must stop now, or a
			// retransmission would land in the new request's answer.
			r.cancel(errSuperseded)
			r.st.abandon()
			delete(s.requests, seq)
			s.order = slices.DeleteFunc(s.order, func(q uint8) bool { return q == seq })
		}
		for _, cmd := range []serialproto.Command{serialproto.CmdInfer, serialproto.CmdTools, serialproto.CmdToolResult} {
			s.reasm.Forget(cmd, seq)
			delete(s.gaps, gapKey{cmd, seq})
		}
		delete(s.firstFrag, seq)
	}
	if cmd != serialproto.CmdInfer && cmd != serialproto.CmdTools { // taken when accepted
		s.seqs.Take(seq)
	}
	return state
}

func (s *session) welcome() *serialproto.Welcome {
	var features uint16
	if s.verifier != nil {
		features |= serialproto.FeatureSign
	}
	if s.sack {
		features |= serialproto.FeatureSACK
	}
	if s.statusExt {
		features |= serialproto.FeatureStatusExt
	}
	if s.resumed.Load() {
		features |= serialproto.FeatureResume
	}
	cfg := s.d.conf()
	return &serialproto.Welcome{
		Version: serialproto.Version1, MaxData: serialproto.MaxData, Window: 255, Features: features,
		HeartbeatMS: uint16(cfg.Heartbeat / time.Millisecond),
		MaxMessage:  uint16(cfg.MaxMessage), DaemonNonce: s.daemonNonce,
	}
}

// minRTO is the floor of the adaptive RTO towards p: the configured one on
// UDP; on a byte stream the line-rate RTO of §7.1, which already is the
// least time a window of full frames takes there and back.
func minRTO(p Peer, window int, configured time.Duration) time.Duration {
	if p.ByteStream() {
		return p.RTO(window)
	}
	return configured
}

func (s *session) touch()              { s.seen.Store(s.d.clock.Now().UnixNano()) }
func (s *session) lastSeen() time.Time { return time.Unix(0, s.seen.Load()) }

// busy reports whether the session has a request queued, running or
// streaming.
func (s *session) busy() bool { return s.places.count() > 0 }

func (s *session) send(seq uint8, m serialproto.Message) {
	// Until the device has taken a whole answer, its source address is
	// unproven (a spoofed HELLO opens a session too): answers stay within
	// the bytes it sent. Stream chunks go out by the stream, unbounded.
	s.d.sendTo(s.peer, seq, s.maxData, s.seal, m, !s.delivered.Load())
}

// close ends the session and everything running in it; its conversation
// is kept for its owner (chats.go).
func (s *session) close(cause error) {
	s.cancel(cause)
	s.d.sessions.remove(s)
	s.park()
}

func (s *session) cancelRequests(cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.requests {
		r.cancel(cause)
	}
}

func (s *session) expireFragments(now time.Time) {
	s.mu.Lock()
	s.reasm.Expire(now)
	s.mu.Unlock()
}

// allowNack rate-limits NACK BAD_FRAME to one per quarter RTO.
func (s *session) allowNack(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastNack) < s.peer.RTO(s.window)/4 {
		return false
	}
	s.lastNack = now
	return true
}

// handle serves one frame of an open session.
func (s *session) handle(f serialproto.Frame) {
	f, ok := s.open(f)
	if !ok {
		return
	}
	s.touch()
	state := serialproto.SeqNew
	if f.Cmd.Request() {
		if state = s.fresh(f.Cmd, f.Seq); state == serialproto.SeqStale {
			// A delayed copy of a request too old to be remembered: it may
			// have run already, so it must not run now (§5).
			s.d.stats.refused(s.peer.LinkName(), serialproto.CodeUnexpected)
			s.send(f.Seq, serialproto.NewError(serialproto.CodeUnexpected, "stale seq"))
			return
		}
	}
	switch f.Cmd {
	case serialproto.CmdInfer:
		if state == serialproto.SeqDuplicate {
			s.repeatAck(f.Seq)
			return
		}
		s.infer(f)
		return
	case serialproto.CmdTools:
		s.declare(f, state == serialproto.SeqDuplicate)
		return
	case serialproto.CmdToolResult:
		s.toolResult(f)
		return
	}
	if f.Flags&serialproto.FlagFragment != 0 {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, f.Cmd.String()+" cannot be fragmented"))
		return
	}
	m, err := serialproto.ParseBody(f.Cmd, f.Data)
	if err != nil {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, err.Error()))
		return
	}
	switch m := m.(type) {
	case *serialproto.Ack:
		if r := s.request(f.Seq); r != nil && r.st.ack(int(m.Next), int(m.Window), m.SACK) {
			// Delivered: the device's place is free now, before this link
			// reads its next INFER, not when the request's goroutine wakes.
			r.ticket.delivered()
			s.delivered.Store(true)
		}
	case *serialproto.Cancel:
		s.cancelRequest(f.Seq)
	case *serialproto.Ping:
		s.send(f.Seq, &serialproto.Pong{Data: m.Data})
	case *serialproto.Pong:
	case *serialproto.Status:
		s.send(f.Seq, s.d.status(s.statusExt))
	case *serialproto.Bye:
		s.send(f.Seq, &serialproto.Bye{})
		s.close(errSessionClosed)
	case *serialproto.Nack:
		// The device saw a corrupt frame: resend now. Only on a byte stream
		// (§7.2): on UDP one spoofed datagram would make us resend whole
		// answers to its victim.
		if m.Reason == serialproto.NackBadFrame && s.peer.ByteStream() && s.allowNack(s.d.clock.Now()) {
			s.mu.Lock()
			for _, r := range s.requests {
				r.st.rewind()
			}
			s.mu.Unlock()
		}
	case *serialproto.Error:
		s.d.remoteLog(slog.LevelInfo, "device reported an error", "device", s.deviceID, "code", m.Code, "text", m.Text)
	}
	// WELCOME, TOKEN, DONE and STATUS_REPLY never get here: HandleFrame
	// answers them UNEXPECTED before a session or a body is looked at (§4).
}

func (s *session) request(seq uint8) *request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[seq]
}

func (s *session) cancelRequest(seq uint8) {
	r := s.request(seq)
	if r == nil {
		s.send(seq, serialproto.NewError(serialproto.CodeUnknownRequest, "no such request"))
		return
	}
	r.cancel(errCancelledByDevice)
	r.st.resendFinal() // if the stream already ended, its final chunk answers the CANCEL
}

// conversation is the history plus the new prompt, for the engine.
func (s *session) conversation(m *serialproto.Infer) []backends.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	msgs := make([]backends.Message, 0, len(s.history)+2)
	if m.System != "" {
		msgs = append(msgs, backends.Message{Role: backends.RoleSystem, Content: m.System})
	}
	msgs = append(msgs, s.history...)
	return append(msgs, backends.Message{Role: backends.RoleUser, Content: m.Prompt})
}

// dropOldTurns forgets the older half of the chat history, in whole turns
// (a prompt and its answer), when the conversation does not fit the
// model's context; the system prompt, which comes with each INFER, and the
// new prompt stay. It reports whether there was a turn to drop. Half, not
// the oldest turn alone, for the reason remember drops in bulk: each drop
// changes the start of the prompt and costs the engine's KV reuse, and a
// chat whose window is full would otherwise drop one turn — and evaluate
// its whole history again — at every turn. After a halving the prompt keeps
// its start until the context is full again (generate calls this again
// while the prompt is still too long).
func (s *session) dropOldTurns() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.history) < 2 {
		return false
	}
	s.history = lastTurns(s.history, len(s.history)/2)
	s.d.chats.changed()
	return true
}

// lastTurns is a copy of the whole turns among the last n messages of h: a
// turn begins with its prompt (a user message) and may hold tool calls and
// results before its answer (§16), so a cut lands on a prompt.
func lastTurns(h []backends.Message, n int) []backends.Message {
	i := max(len(h)-n, 0)
	for i < len(h) && h[i].Role != backends.RoleUser {
		i++
	}
	return append(h[:0:0], h[i:]...)
}

// remember adds a finished turn to the history. Beyond MaxHistory
// messages it drops whole old turns down to half of MaxHistory, not just
// the oldest one: every drop changes the start of the next prompt, and an
// engine's KV cache only saves what a prompt starts with (docs/caching.md).
// Dropping one turn per turn would make every turn of a long chat evaluate
// its whole history again; this way one turn in MaxHistory/4 does.
//
// A turn of a request with tools keeps its calls and their results between
// the prompt and the answer (§16): the next question may refer to what a
// tool said, and the engine's KV cache finds the prompt it evaluated.
// The answer keeps the token ids the engine generated for it (nil from an
// engine without them): the in-process engine evaluates them again instead
// of a new tokenisation of the answer, so the next turn finds the whole
// previous turn in the KV cache (docs/caching.md).
func (s *session) remember(prompt string, tools []backends.Message, answer string, tokens []int32) {
	s.mu.Lock()
	s.history = append(s.history, backends.Message{Role: backends.RoleUser, Content: prompt})
	s.history = append(s.history, tools...)
	s.history = append(s.history, backends.Message{Role: backends.RoleAssistant, Content: answer, Tokens: tokens})
	if limit := s.d.conf().MaxHistory; len(s.history) > limit {
		s.history = lastTurns(s.history, max(limit/2&^1, min(limit&^1, 2)))
	}
	s.mu.Unlock()
	s.d.chats.changed()
	if s.ctx.Err() != nil {
		s.park() // the session ended while this turn was generated: keep it too
	}
}
