package daemon

import "github.com/mcpd-project/mcpd/serialproto"

// The NACK MISSING timer (docs/protocol.md §6): when no fragment of an
// INFER in reassembly has arrived for half an RTO, the daemon lists the
// missing ones, so a device whose fragments were lost resends them at once
// instead of waiting for its own timer to probe with the last fragment —
// which, were the last fragment lost too, would be the first the daemon
// hears of the gap.

// watchGap starts the timer for the INFER seq in reassembly unless it runs
// already. Called with s.mu held, after a fragment that left the message
// incomplete.
func (s *session) watchGap(seq uint8) {
	if s.gaps[seq] {
		return
	}
	if s.gaps == nil {
		s.gaps = make(map[uint8]bool)
	}
	s.gaps[seq] = true
	go s.nackGap(seq)
}

// nackGap waits until the message seq has made no progress for half an
// RTO and then sends NACK MISSING — once per silence: it ends with the NACK,
// and the next fragment to arrive starts another timer (if the NACK is
// lost, the device's probe repairs it). It ends without a NACK when the
// message completes, is discarded or expires, or the session ends.
func (s *session) nackGap(seq uint8) {
	half := s.rtt.rto() / 2 // the RTO measured on the answer streams, or the initial one
	t := s.d.clock.NewTimer(half)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C():
		}
		s.mu.Lock()
		last, pending := s.reasm.LastProgress(serialproto.CmdInfer, seq)
		wait := half - s.d.clock.Now().Sub(last)
		var missing []byte
		if pending && wait <= 0 {
			missing = s.reasm.Missing(serialproto.CmdInfer, seq)
		}
		if !pending || wait <= 0 {
			delete(s.gaps, seq)
		}
		s.mu.Unlock()
		switch {
		case len(missing) > 0:
			s.send(seq, &serialproto.Nack{Reason: serialproto.NackMissing, Missing: missing})
			return
		case !pending || wait <= 0:
			return
		}
		t.Reset(wait) // a fragment arrived meanwhile: half an RTO from it
	}
}
