package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// infer takes an INFER frame or fragment (docs/protocol.md §6, §7.3):
// reassembly, then the policy and admission, then the request runs.
func (s *session) infer(f serialproto.Frame) {
	if f.Flags&serialproto.FlagFragment == 0 {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, "INFER must be a message of fragments (§6)"))
		return
	}
	now := s.d.clock.Now()
	s.mu.Lock()
	body, missing, err := s.addFragment(now, f)
	first := s.noteFragment(f.Seq, now, body != nil)
	s.mu.Unlock()
	switch {
	case errors.Is(err, serialproto.ErrDuplicate):
		s.repeatAck(f.Seq)
		return
	case errors.Is(err, serialproto.ErrBusy):
		s.d.stats.refused(s.peer.LinkName(), serialproto.CodeBusy)
		s.d.remoteLog(slog.LevelInfo, "request refused", "device", s.deviceID, "link", s.peer.LinkName(), "seq", f.Seq, "code", "BUSY", "reason", "too many messages in reassembly")
		s.send(f.Seq, serialproto.NewError(serialproto.CodeBusy, "too many messages in reassembly"))
		return
	case errors.Is(err, serialproto.ErrTooLarge):
		s.send(f.Seq, serialproto.NewError(serialproto.CodeTooLarge, fmt.Sprintf("message above max_message, %d bytes", s.d.conf().MaxMessage)))
		return
	case errors.Is(err, serialproto.ErrBadChecksum):
		s.send(f.Seq, &serialproto.Nack{Reason: serialproto.NackBadChecksum})
		return
	case err != nil:
		s.send(f.Seq, serialproto.NewError(serialproto.CodeMalformed, deviceText(err)))
		return
	case missing != nil:
		s.send(f.Seq, &serialproto.Nack{Reason: serialproto.NackMissing, Missing: missing})
		return
	case body == nil:
		return // more fragments to come, or a NACK went out less than an RTO ago
	}
	count := int(f.Data[1])
	if s.repeatAck(f.Seq) {
		return
	}
	var m serialproto.Infer
	if err := m.UnmarshalBody(body); err != nil {
		code := serialproto.CodeMalformed
		if errors.Is(err, serialproto.ErrUnsupportedOption) {
			code = serialproto.CodeUnsupportedOption
		}
		s.refuse(f.Seq, serialproto.NewError(code, deviceText(err)))
		return
	}
	if e := s.allowModel(&m); e != nil {
		s.refuse(f.Seq, e)
		return
	}
	schema, e := s.schemaFor(&m)
	if e != nil {
		s.refuse(f.Seq, e)
		return
	}
	calls, e := s.toolsFor(&m, schema != nil)
	if e != nil {
		s.refuse(f.Seq, e)
		return
	}
	t, err := s.d.admission.admitAs(&s.places, claim{device: s.deviceID, source: sourceKey(s.peer)}, maxTokens(&m, s.d.conf()))
	if err != nil {
		s.refuse(f.Seq, refusal(err))
		return
	}
	if t.budgeted() { // the engine may generate what the budget reserved, no more
		m.Set = m.Set.With(serialproto.OptMaxTokens)
		m.MaxTokens = uint16(t.tokens)
	}
	r := s.newRequest(f.Seq, count, &m, first, t, schema, calls)
	s.d.stats.Accepted.Add(1)
	s.send(f.Seq, &serialproto.Ack{Next: uint16(count)})
	go r.run()
}

// refuse answers an INFER that will not run. A refused INFER leaves no
// trace, so its retransmission (the ERROR may have been lost) is judged
// again and answered again, never met with silence.
func (s *session) refuse(seq uint8, e *serialproto.Error) {
	s.mu.Lock()
	s.reasm.Forget(serialproto.CmdInfer, seq)
	s.mu.Unlock()
	s.d.stats.refused(s.peer.LinkName(), e.Code)
	s.d.remoteLog(slog.LevelInfo, "request refused", "device", s.deviceID, "link", s.peer.LinkName(), "seq", seq, "code", e.Code.String(), "reason", e.Text)
	s.send(seq, e)
}

// maxTokens is how many tokens an INFER may generate: what it asks for,
// at most the daemon's cap (MaxTokens), or the default.
func maxTokens(m *serialproto.Infer, cfg *Config) int {
	if m.Set.Has(serialproto.OptMaxTokens) && m.MaxTokens > 0 {
		return min(int(m.MaxTokens), cfg.MaxTokens)
	}
	return cfg.DefaultMaxTokens
}

// repeatAck answers a copy of an accepted INFER with its ACK again (§5),
// and reports whether the request was known. Only the ACK: while the
// stream lives its own retransmission delivers every chunk, the final one
// included, and once the device has acknowledged the final chunk a copy of
// the INFER can only be the network's. A seq taken by a request that is no
// INFER (a device reusing a PING's seq) is answered UNEXPECTED: it cannot
// be a copy, and it must not run.
func (s *session) repeatAck(seq uint8) bool {
	r := s.request(seq)
	if r == nil {
		if s.seqTaken(seq) {
			s.d.stats.refused(s.peer.LinkName(), serialproto.CodeUnexpected)
			s.send(seq, serialproto.NewError(serialproto.CodeUnexpected, "seq taken by another request"))
			return true
		}
		return false
	}
	s.d.stats.Duplicates.Add(1)
	s.send(seq, &serialproto.Ack{Next: uint16(r.fragments)})
	return true
}

// seqTaken reports whether the device's request seq was taken (§5).
func (s *session) seqTaken(seq uint8) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seqs.Classify(seq) == serialproto.SeqDuplicate
}

// noteFragment remembers when an INFER's first fragment arrived and, once
// the message is complete, returns that time (the request log's and the
// observers' start). Called with s.mu held.
func (s *session) noteFragment(seq uint8, now time.Time, complete bool) time.Time {
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

// newRequest makes the request for an admitted INFER — with its answer's
// schema and its tools, each nil when it has none — and remembers it under
// its seq.
func (s *session) newRequest(seq uint8, fragments int, m *serialproto.Infer, first time.Time, t *ticket, schema *Schema, calls *toolCalls) *request {
	cfg := s.d.conf()
	deadline := cfg.RequestTimeout
	if m.Set.Has(serialproto.OptDeadlineMS) && m.DeadlineMS > 0 {
		deadline = min(deadline, time.Duration(m.DeadlineMS)*time.Millisecond)
	}
	ctx, cancel := context.WithCancelCause(s.ctx)
	ctx, cancelTimeout := context.WithTimeout(ctx, deadline)
	link := s.peer.LinkName()
	ctx, obs := s.d.requestObserver(ctx, RequestInfo{Link: link, Device: s.deviceID, Seq: seq, First: first, Model: m.Model})
	r := &request{
		s: s, seq: seq, fragments: fragments, infer: m, ticket: t, schema: schema, calls: calls,
		ctx: ctx, cancelCause: cancel, cancelTimeout: cancelTimeout, obs: obs,
		st: newStream(s.peer, s.seal, s.d.clock, s.rtt, s.sack, serialproto.Version1, seq, s.maxData, s.window, cfg.FlushInterval, cfg.MaxRetransmits),
	}
	stats := &s.d.stats
	r.st.onSend = func(cmd serialproto.Command, retransmit bool) {
		stats.frame(link, FrameOut, cmd)
		if retransmit {
			stats.retransmit(link)
		}
	}
	if !s.delivered.Load() && s.d.unproven(s.peer) {
		// The source may be spoofed (§7.2): until the device acknowledges a
		// chunk, the stream, retransmissions included, spends the bytes the
		// source sent, like every other answer to it. Without this a spoofed
		// HELLO and INFER made the daemon send a victim a window of chunks
		// nine times over.
		source := limitKeyOf(s.peer)
		r.st.gate = func(n int) bool {
			if s.d.limiter.spend(source, n) {
				return true
			}
			stats.Unanswered.Add(1)
			return false
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Set.Has(serialproto.OptNewChat) && s.history != nil {
		s.history = nil
		s.d.chats.changed()
	}
	if len(s.order) >= rememberedRequests {
		// Forget the oldest request whose answer is delivered. One still
		// streaming stays: on a fast link a device asks 32 questions within
		// one RTO of the daemon, and a stream forgotten while its final ACK
		// was lost could never take the device's ACK again — it held one
		// of the device's places until its retries ran out (the device
		// got BUSY). Live streams hold places, so at most MaxPerSession
		// stay beyond the 32.
		i := slices.IndexFunc(s.order, func(q uint8) bool { return s.requests[q].ended.Load() })
		if i < 0 {
			i = 0
		}
		delete(s.requests, s.order[i])
		s.order = slices.Delete(s.order, i, i+1)
	}
	s.requests[seq] = r
	s.order = append(s.order, seq)
	s.seqs.Take(seq) // accepted: from now on a copy is a duplicate (§5)
	return r
}
