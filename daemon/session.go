package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
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
	bootNonce   uint32
	daemonNonce uint32
	maxData     int // the device's
	window      int
	ctx         context.Context
	cancel      context.CancelCauseFunc
	seen        atomic.Int64          // unix nanoseconds of the last frame
	seal        *sealer               // signs what we send when the device has a key
	verifier    *serialproto.Verifier // checks what it sends; nil in an unsigned session
	lastAuthErr time.Time             // AUTH_FAILED answers are rate-limited (§9.2)
	opened      time.Time             // for eviction of half-open sessions (guard.go)
	delivered   atomic.Bool           // the device acknowledged a whole answer (guard.go)

	mu       sync.Mutex
	reasm    *serialproto.Reassembler
	requests map[uint8]*request
	order    []uint8 // seqs of requests, oldest first
	newest   uint8   // the newest request seq seen (§5); starts at the HELLO's
	active   int     // accepted requests not yet finished
	history  []backends.Message
	lastNack time.Time
	// firstFrag holds when the first fragment of each INFER in reassembly
	// arrived, for the request's trace; kept only while observed.
	firstFrag map[uint8]time.Time
}

func newSession(d *Daemon, parent context.Context, p Peer, h *serialproto.Hello, helloSeq uint8, nonce uint32, key serialproto.Key) (*session, error) {
	ctx, cancel := context.WithCancelCause(parent)
	s := &session{
		d: d, peer: p, deviceID: h.DeviceID, bootNonce: h.BootNonce, daemonNonce: nonce,
		maxData: int(h.MaxData), window: int(h.Window),
		ctx: ctx, cancel: cancel,
		reasm:    serialproto.NewReassembler(serialproto.ReassemblerConfig{MaxMessage: d.conf().MaxMessage, MaxPending: d.conf().MaxPendingPerPeer}),
		requests: make(map[uint8]*request),
		newest:   helloSeq,
	}
	if !key.IsZero() {
		n := serialproto.MakeNonce(h.BootNonce, nonce)
		signer, err := serialproto.NewSigner(key, serialproto.DaemonToDevice, n, 0, 0)
		if err != nil {
			return nil, err
		}
		if s.verifier, err = serialproto.NewVerifier(key, serialproto.DeviceToDaemon, n); err != nil {
			return nil, err
		}
		s.seal = &sealer{signer: signer}
	}
	s.touch()
	s.opened = time.Now()
	return s, nil
}

// open checks a frame's signature in a signed session and strips it; in an
// unsigned session it refuses signed frames. Failures are counted and
// answered with AUTH_FAILED at most once a second — except replayed and
// stale frames: their tag is right, so they are copies of frames already
// taken (UDP duplicates them), and an answer would only make the device
// abandon a request that is fine.
func (s *session) open(f serialproto.Frame) (serialproto.Frame, bool) {
	var err error
	s.mu.Lock()
	switch {
	case s.verifier != nil:
		f, _, _, err = s.verifier.Verify(f)
	case f.Flags&serialproto.FlagSigned != 0:
		err = serialproto.ErrBadTag // no key: a signature can't be right
	}
	copied := errors.Is(err, serialproto.ErrReplay) || errors.Is(err, serialproto.ErrStale)
	answer := err != nil && !copied && time.Since(s.lastAuthErr) >= time.Second
	if answer {
		s.lastAuthErr = time.Now()
	}
	s.mu.Unlock()
	if err == nil {
		return f, true
	}
	s.d.countAuth(err)
	s.d.log.Info("frame rejected", "device", s.deviceID, "reason", err)
	if answer {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeAuthFailed, "frame signature rejected"))
	}
	return f, false
}

// advance notes a request seq (§5). A seq after the newest one starts a new
// request, so whatever an old request with the same seq (256 requests ago,
// PINGs included) left behind is forgotten: it must run, not be mistaken
// for a retransmission.
func (s *session) advance(seq uint8) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !serialproto.SeqAfter(seq, s.newest) {
		return
	}
	s.newest = seq
	if r := s.requests[seq]; r != nil {
		delete(s.requests, seq)
		s.order = slices.DeleteFunc(s.order, func(q uint8) bool { return q == seq })
	}
	s.reasm.Forget(serialproto.CmdInfer, seq)
	delete(s.firstFrag, seq)
}

func (s *session) welcome() *serialproto.Welcome {
	var features uint16
	if s.verifier != nil {
		features = serialproto.FeatureSign
	}
	return &serialproto.Welcome{
		Version: serialproto.Version1, MaxData: serialproto.MaxData, Window: 255, Features: features,
		HeartbeatMS: uint16(s.d.conf().Heartbeat / time.Millisecond),
		MaxMessage:  uint16(s.d.conf().MaxMessage), DaemonNonce: s.daemonNonce,
	}
}

func (s *session) touch()              { s.seen.Store(time.Now().UnixNano()) }
func (s *session) lastSeen() time.Time { return time.Unix(0, s.seen.Load()) }

func (s *session) send(seq uint8, m serialproto.Message) {
	s.d.sendTo(s.peer, seq, s.maxData, s.seal, m)
}

// close ends the session and everything running in it.
func (s *session) close(cause error) {
	s.cancel(cause)
	s.d.removeSession(s)
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
	if now.Sub(s.lastNack) < s.peer.RTO()/4 {
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
	switch f.Cmd {
	case serialproto.CmdPing, serialproto.CmdStatus, serialproto.CmdInfer, serialproto.CmdBye:
		s.advance(f.Seq) // requests the device originates
	}
	if f.Cmd == serialproto.CmdInfer {
		s.infer(f)
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
		if r := s.request(f.Seq); r != nil && r.st.ack(int(m.Next), int(m.Window)) {
			// Delivered: the device's place is free now, before this link
			// reads its next INFER, not when the request's goroutine wakes.
			r.releasePlace()
			s.delivered.Store(true)
		}
	case *serialproto.Cancel:
		s.cancelRequest(f.Seq)
	case *serialproto.Ping:
		s.send(f.Seq, &serialproto.Pong{Data: m.Data})
	case *serialproto.Pong:
	case *serialproto.Status:
		s.send(f.Seq, s.d.status())
	case *serialproto.Bye:
		s.send(f.Seq, &serialproto.Bye{})
		s.close(errSessionClosed)
	case *serialproto.Nack:
		// The device saw a corrupt frame: resend now. Only on a byte stream
		// (§7.2): on UDP one spoofed datagram would make us resend whole
		// answers to its victim.
		if m.Reason == serialproto.NackBadFrame && s.peer.ByteStream() && s.allowNack(time.Now()) {
			s.mu.Lock()
			for _, r := range s.requests {
				r.st.rewind()
			}
			s.mu.Unlock()
		}
	case *serialproto.Error:
		s.d.log.Info("device reported an error", "device", s.deviceID, "code", m.Code, "text", m.Text)
	default: // WELCOME, TOKEN, DONE, STATUS_REPLY travel the other way
		s.send(f.Seq, serialproto.NewError(serialproto.CodeUnexpected, f.Cmd.String()+" is sent by the daemon"))
	}
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

// infer takes an INFER frame or fragment (docs/protocol.md §6, §7.3).
func (s *session) infer(f serialproto.Frame) {
	if f.Flags&serialproto.FlagFragment == 0 {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, "INFER must be a message of fragments (§6)"))
		return
	}
	now := time.Now()
	s.mu.Lock()
	body, missing, err := s.reasm.Add(now, f.Cmd, f.Seq, f.Data)
	first := s.noteFragment(f.Seq, now, body != nil)
	s.mu.Unlock()
	switch {
	case errors.Is(err, serialproto.ErrDuplicate):
		s.repeatAck(f.Seq)
		return
	case errors.Is(err, serialproto.ErrBusy):
		s.d.observeRefused(s.peer.LinkName(), serialproto.CodeBusy)
		s.send(f.Seq, serialproto.NewError(serialproto.CodeBusy, "too many messages in reassembly"))
		return
	case errors.Is(err, serialproto.ErrTooLarge):
		s.send(f.Seq, serialproto.NewError(serialproto.CodeTooLarge, "message above max_message"))
		return
	case errors.Is(err, serialproto.ErrBadChecksum):
		s.send(f.Seq, &serialproto.Nack{Reason: serialproto.NackBadChecksum})
		return
	case err != nil:
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, err.Error()))
		return
	case missing != nil:
		s.send(f.Seq, &serialproto.Nack{Reason: serialproto.NackMissing, Missing: missing})
		return
	case body == nil:
		return // more fragments to come
	}
	count := int(f.Data[1])
	if s.repeatAck(f.Seq) {
		return
	}
	// A refused INFER leaves no trace, so its retransmission (the ERROR may
	// have been lost) is judged again and answered again, never met with
	// silence.
	refuse := func(e *serialproto.Error) {
		s.mu.Lock()
		s.reasm.Forget(serialproto.CmdInfer, f.Seq)
		s.mu.Unlock()
		s.d.observeRefused(s.peer.LinkName(), e.Code)
		s.send(f.Seq, e)
	}
	var m serialproto.Infer
	if err := m.UnmarshalBody(body); err != nil {
		code := serialproto.CodeMalformed
		if errors.Is(err, serialproto.ErrUnsupportedOption) {
			code = serialproto.CodeUnsupportedOption
		}
		refuse(serialproto.NewError(code, err.Error()))
		return
	}
	if !s.allowModel(&m, refuse) {
		return
	}
	if !s.reserve() {
		s.d.stats.Busy.Add(1)
		refuse(serialproto.NewError(serialproto.CodeBusy, "this device has too many requests"))
		return
	}
	if !s.d.admit() {
		s.unreserve()
		s.d.stats.Busy.Add(1)
		refuse(serialproto.NewError(serialproto.CodeBusy, "request queue full"))
		return
	}
	if s.d.draining.Load() { // checked after admit: drain waits for admitted requests
		s.d.release()
		s.unreserve()
		refuse(serialproto.NewError(serialproto.CodeShuttingDown, "shutting down"))
		return
	}
	if !s.takeBudget(&m) { // last: a refusal above would have to give it back
		s.d.release()
		s.unreserve()
		refuse(serialproto.NewError(serialproto.CodeRateLimited, "token budget spent"))
		return
	}
	r := s.newRequest(f.Seq, count, &m, first)
	s.d.stats.Accepted.Add(1)
	s.send(f.Seq, &serialproto.Ack{Next: uint16(count)})
	go r.run()
}

// reserve takes one of the session's request places: one device may not
// fill the whole queue and starve the others.
func (s *session) reserve() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active >= s.d.conf().MaxPerSession {
		return false
	}
	s.active++
	return true
}

func (s *session) unreserve() {
	s.mu.Lock()
	s.active--
	s.mu.Unlock()
}

// repeatAck answers a retransmitted INFER whose request is known.
func (s *session) repeatAck(seq uint8) bool {
	r := s.request(seq)
	if r == nil {
		return false
	}
	s.d.stats.Duplicates.Add(1)
	s.send(seq, &serialproto.Ack{Next: uint16(r.fragments)})
	return true
}

// noteFragment remembers when an INFER's first fragment arrived and, once
// the message is complete, returns that time. Called with s.mu held; a
// no-op (returning now) when nothing observes the daemon.
func (s *session) noteFragment(seq uint8, now time.Time, complete bool) time.Time {
	if s.d.obs == nil {
		return now
	}
	first, ok := s.firstFrag[seq]
	if !ok {
		first = now
	}
	switch {
	case complete:
		delete(s.firstFrag, seq)
	case !ok:
		if s.firstFrag == nil {
			s.firstFrag = make(map[uint8]time.Time)
		}
		s.firstFrag[seq] = now
	}
	return first
}

func (s *session) newRequest(seq uint8, fragments int, m *serialproto.Infer, first time.Time) *request {
	deadline := s.d.conf().RequestTimeout
	if m.Set.Has(serialproto.OptDeadlineMS) && m.DeadlineMS > 0 {
		deadline = min(deadline, time.Duration(m.DeadlineMS)*time.Millisecond)
	}
	ctx, cancel := context.WithCancelCause(s.ctx)
	ctx, cancelTimeout := context.WithTimeout(ctx, deadline)
	link := s.peer.LinkName()
	ctx, obs := s.d.requestObserver(ctx, RequestInfo{Link: link, Device: s.deviceID, Seq: seq, First: first, Model: m.Model})
	r := &request{
		s: s, seq: seq, fragments: fragments, infer: m,
		ctx: ctx, cancelCause: cancel, cancelTimeout: cancelTimeout, obs: obs,
		st: newStream(s.peer, s.seal, serialproto.Version1, seq, s.maxData, s.window, s.d.conf().FlushInterval, s.d.conf().MaxRetransmits),
	}
	d := s.d
	r.st.onSend = func(cmd serialproto.Command, retransmit bool) {
		d.stats.FramesOut.Add(1)
		if retransmit {
			d.stats.Retransmits.Add(1)
		}
		if d.obs != nil {
			d.obs.Frame(link, FrameOut, cmd)
			if retransmit {
				d.obs.Retransmit(link)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Set.Has(serialproto.OptNewChat) {
		s.history = nil
	}
	if len(s.order) >= rememberedRequests {
		delete(s.requests, s.order[0])
		s.order = s.order[1:]
	}
	s.requests[seq] = r
	s.order = append(s.order, seq)
	return r
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

func (s *session) remember(prompt, answer string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.history = append(s.history,
		backends.Message{Role: backends.RoleUser, Content: prompt},
		backends.Message{Role: backends.RoleAssistant, Content: answer})
	if extra := len(s.history) - s.d.conf().MaxHistory; extra > 0 {
		s.history = append(s.history[:0:0], s.history[extra+extra%2:]...) // drop whole turns
	}
}

// request is one accepted INFER.
type request struct {
	s             *session
	seq           uint8
	fragments     int
	infer         *serialproto.Infer
	ctx           context.Context
	cancelCause   context.CancelCauseFunc
	cancelTimeout context.CancelFunc
	st            *stream
	obs           RequestObserver // nil when nothing observes
	released      atomic.Bool     // the device's place is given back (releasePlace)
}

func (r *request) cancel(cause error) { r.cancelCause(cause) }

// releasePlace gives the request's place among its device's MaxPerSession
// back, once: when the device acknowledges the final chunk, or when run
// ends, whichever comes first.
func (r *request) releasePlace() {
	if r.released.CompareAndSwap(false, true) {
		r.s.unreserve()
	}
}

// run waits for an engine slot, generates, and streams the answer; every
// accepted request ends in exactly one final chunk (DONE or ERROR).
func (r *request) run() {
	d := r.s.d
	d.streaming.Add(1)
	defer d.streaming.Add(-1)
	defer r.releasePlace()
	defer r.cancelCause(nil) // release the context (a no-op if already cancelled)
	defer r.cancelTimeout()
	sent := make(chan error, 1)
	go func() {
		err := r.st.run(r.s.ctx)
		if err != nil {
			r.cancel(err) // the device is gone: stop the engine now, not at the deadline
		}
		sent <- err
	}()

	var answer strings.Builder
	res, err := r.generate(&answer)
	d.settleBudget(r.s.deviceID, r.infer, res.Tokens)
	// The engine's work is done: the admission ends here, not when a slow
	// device has acknowledged the last chunk, so one device's next request
	// never waits on (or counts twice against) the queue bound.
	d.release()
	// Account before the final chunk exists: the device may send its next
	// INFER the moment it sees DONE, and that one must see this turn.
	switch {
	case err == nil:
		d.stats.Done.Add(1)
		r.s.remember(r.infer.Prompt, answer.String())
	case errors.Is(context.Cause(r.ctx), errCancelledByDevice):
		d.stats.Canceled.Add(1)
	default:
		d.stats.Failed.Add(1)
	}
	if r.obs != nil {
		var code serialproto.ErrorCode
		if err != nil {
			code = errorCode(err, context.Cause(r.ctx))
		}
		r.obs.Generated(res, err, code)
	}
	r.st.finish(r.final(res, err))
	err = <-sent
	if err != nil {
		d.log.Info("stream ended early", "device", r.s.deviceID, "seq", r.seq, "err", err)
	}
	if r.obs != nil {
		r.obs.Delivered(err)
	}
}

func (r *request) generate(answer *strings.Builder) (backends.Result, error) {
	d := r.s.d
	slots := *d.slots.Load() // released to the pool it came from, even after a reload
	select {
	case slots <- struct{}{}:
	case <-r.ctx.Done():
		return backends.Result{}, context.Cause(r.ctx)
	}
	defer func() { <-slots }()
	e := d.acquireEngine()
	defer e.release()
	call := d.live.begin()
	defer d.live.end(call)
	if r.obs != nil {
		r.obs.Generating(e.b.Name())
	}
	req := backends.Request{Model: r.infer.Model, Messages: r.s.conversation(r.infer), Options: options(r.infer, d.conf().DefaultMaxTokens)}
	res, err := e.b.Generate(r.ctx, req, func(piece []byte) error {
		call.step()
		if r.obs != nil {
			r.obs.Token(len(piece))
		}
		answer.Write(piece)
		return r.st.write(piece)
	})
	if err == nil && r.ctx.Err() != nil {
		err = context.Cause(r.ctx)
	}
	return res, err
}

// final builds the stream's last chunk from the outcome.
func (r *request) final(res backends.Result, err error) finalFunc {
	if err == nil {
		return func(chunk uint16, n, crc uint32) serialproto.Message {
			return &serialproto.Done{
				Chunk: chunk, Reason: stopReason(res.Stop),
				Tokens: uint32(res.Tokens), PromptTokens: uint32(res.PromptTokens),
				TTFTMS: uint32(res.TTFT.Milliseconds()), DurationMS: uint32(res.Duration.Milliseconds()),
				TextBytes: n, TextCRC32C: crc,
			}
		}
	}
	code := errorCode(err, context.Cause(r.ctx))
	text := err.Error()
	return func(chunk uint16, _, _ uint32) serialproto.Message {
		e := serialproto.NewError(code, text)
		e.Flags |= serialproto.ErrorFlagStream
		e.Chunk = chunk
		return e
	}
}

func stopReason(s backends.StopReason) uint8 {
	switch s {
	case backends.StopLength:
		return serialproto.StopLength
	case backends.StopContext:
		return serialproto.StopContext
	}
	return serialproto.StopEOS
}

// errorCode maps an engine error, or the reason the request's context
// ended, to a protocol error code (docs/protocol.md §12).
func errorCode(err, cause error) serialproto.ErrorCode {
	switch {
	case errors.Is(cause, errCancelledByDevice), errors.Is(cause, errSessionClosed):
		return serialproto.CodeCancelled
	case errors.Is(cause, errShuttingDown):
		return serialproto.CodeShuttingDown
	case errors.Is(cause, context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return serialproto.CodeTimeout
	case errors.Is(err, backends.ErrModelNotFound):
		return serialproto.CodeModelNotFound
	case errors.Is(err, backends.ErrUnavailable), errors.Is(err, backends.ErrClosed):
		return serialproto.CodeBackendUnavailable
	case errors.Is(err, backends.ErrBusy):
		return serialproto.CodeBusy
	case errors.Is(err, backends.ErrPromptTooLong):
		return serialproto.CodeTooLarge
	}
	return serialproto.CodeBackendFailed
}

// options maps INFER options to the engine's.
func options(m *serialproto.Infer, defaultMaxTokens int) backends.Options {
	o := backends.Options{MaxTokens: defaultMaxTokens}
	milli := func(v uint16) float32 { return float32(v) / 1000 }
	if m.Set.Has(serialproto.OptMaxTokens) && m.MaxTokens > 0 {
		o.MaxTokens = int(m.MaxTokens)
	}
	if m.Set.Has(serialproto.OptTemperature) {
		o.Temperature, o.TemperatureSet = milli(m.Temperature), true
	}
	if m.Set.Has(serialproto.OptSeed) {
		o.Seed, o.SeedSet = m.Seed, true
	}
	if m.Set.Has(serialproto.OptTopK) {
		o.TopK = int(m.TopK)
	}
	if m.Set.Has(serialproto.OptTopP) {
		o.TopP = milli(m.TopP)
	}
	if m.Set.Has(serialproto.OptMinP) {
		o.MinP = milli(m.MinP)
	}
	if m.Set.Has(serialproto.OptRepeatPenalty) {
		o.RepeatPenalty = milli(m.RepeatPenalty)
	}
	if m.Set.Has(serialproto.OptContext) {
		o.ContextSize = int(m.Context)
	}
	return o
}
