package daemon

import (
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// The NACK MISSING timer (docs/protocol.md §6): when no fragment of a
// message in reassembly (an INFER, TOOLS or TOOL_RESULT, §16) has arrived
// for half an RTO, the daemon lists the
// missing ones, so a device whose fragments were lost resends them at once
// instead of waiting for its own timer to probe with the last fragment —
// which, were the last fragment lost too, would be the first the daemon
// hears of the gap. A NACK can be lost as well (a noisy UART corrupts it):
// while no fragment brings progress it is repeated an RTO later, doubling,
// at most maxNackRepeats times. And one NACK per gap at a time: a probe
// that crosses the NACK (the device's timer fired as the NACK went out) is
// not answered with the same list again within an RTO, or the device would
// send the missing fragments twice.

// maxNackRepeats bounds the NACKs repeated for one silence: after the
// first and this many more, only the device's probe (or new progress)
// brings another.
const maxNackRepeats = 3

// gapKey names a message in reassembly as the reassembler does: a
// TOOL_RESULT has its INFER's seq (§16), so the seq alone is not enough.
type gapKey struct {
	cmd serialproto.Command
	seq uint8
}

// gap is the NACK state of one message in reassembly.
type gap struct {
	running bool      // a nackGap goroutine watches it
	nackAt  time.Time // the last NACK MISSING sent for it
	repeats int       // NACKs sent since the last progress, less one
}

// addFragment adds a fragment of a message (INFER, TOOLS, TOOL_RESULT) to
// reassembly, as serialproto.Reassembler.Add, and starts the NACK timer
// while the message is incomplete. The missing list it returns — set when
// the last fragment, new or a probe, found a gap — is nil when a NACK for
// the gap went out less than an RTO ago (the probe crossed it). Called
// with s.mu held.
func (s *session) addFragment(now time.Time, f serialproto.Frame) (body, missing []byte, err error) {
	body, missing, err = s.reasm.Add(now, f.Cmd, f.Seq, f.Data)
	if err != nil || body != nil {
		return body, missing, err
	}
	if missing != nil {
		if last, _ := s.reasm.LastProgress(f.Cmd, f.Seq); !s.mayNack(f.Cmd, f.Seq, now, last, s.rtt.rto()) {
			missing = nil
		}
	}
	s.watchGap(f.Cmd, f.Seq) // NACK what is missing if the device falls silent (§6)
	return nil, missing, nil
}

// watchGap starts the timer for the message (cmd, seq) in reassembly
// unless it runs already. Called with s.mu held, after a fragment that left
// the message incomplete.
func (s *session) watchGap(cmd serialproto.Command, seq uint8) {
	g := s.gapOf(cmd, seq)
	if g.running {
		return
	}
	g.running = true
	go s.nackGap(gapKey{cmd, seq})
}

// gapOf returns the NACK state of (cmd, seq), created if need be. Called
// with s.mu held.
func (s *session) gapOf(cmd serialproto.Command, seq uint8) *gap {
	if s.gaps == nil {
		s.gaps = make(map[gapKey]*gap)
	}
	k := gapKey{cmd, seq}
	g := s.gaps[k]
	if g == nil {
		g = &gap{}
		s.gaps[k] = g
	}
	return g
}

// mayNack reports whether a NACK MISSING for (cmd, seq), whose last
// progress was at last, may go out now, and notes it as sent if so: not
// when one went out after that progress less than an RTO ago. Called with
// s.mu held.
func (s *session) mayNack(cmd serialproto.Command, seq uint8, now, last time.Time, rto time.Duration) bool {
	g := s.gapOf(cmd, seq)
	if !g.nackAt.Before(last) && now.Sub(g.nackAt) < rto {
		return false
	}
	if g.nackAt.Before(last) {
		g.repeats = 0
	} else {
		g.repeats++
	}
	g.nackAt = now
	return true
}

// nextNack is when the timer should look at seq again, given its last
// progress; ok is false once the repeats are spent. Called with s.mu held.
func (g *gap) nextNack(last time.Time, rto time.Duration) (at time.Time, ok bool) {
	if g.nackAt.Before(last) { // progress since the last NACK (or none sent)
		return last.Add(rto / 2), true
	}
	if g.repeats >= maxNackRepeats {
		return time.Time{}, false
	}
	return g.nackAt.Add(min(rto<<g.repeats, serialproto.MaxRTO)), true
}

// nackGap waits until the message k has made no progress for half an RTO
// and sends NACK MISSING, then repeats it an RTO later (doubling) while
// nothing new arrives, at most maxNackRepeats times. It ends when the
// message completes, is discarded or expires, the repeats are spent, or
// the session ends; the next fragment starts it again.
func (s *session) nackGap(k gapKey) {
	t := s.d.clock.NewTimer(time.Hour)
	defer t.Stop()
	for first := true; ; first = false {
		if !first { // the first round times from the last progress at once
			select {
			case <-s.ctx.Done():
				return
			case <-t.C():
			}
		}
		rto := s.rtt.rto() // the RTO measured on the answer streams, or the initial one
		now := s.d.clock.Now()
		s.mu.Lock()
		last, pending := s.reasm.LastProgress(k.cmd, k.seq)
		g := s.gaps[k]
		if !pending || g == nil {
			delete(s.gaps, k)
			s.mu.Unlock()
			return
		}
		at, ok := g.nextNack(last, rto)
		var missing []byte
		if ok && !now.Before(at) {
			if missing = s.reasm.Missing(k.cmd, k.seq); len(missing) > 0 && s.timerMayNack(k) && s.mayNack(k.cmd, k.seq, now, last, 0) {
				at, ok = g.nextNack(last, rto)
			} else {
				missing, ok = nil, false // nothing to list: nothing to wait for
			}
		}
		if !ok {
			g.running = false
		} else {
			t.Reset(max(at.Sub(now), 0)) // before the NACK: whoever reads it sees the timer set
		}
		s.mu.Unlock()
		if len(missing) > 0 {
			s.send(k.seq, &serialproto.Nack{Reason: serialproto.NackMissing, Missing: missing})
		}
		if !ok {
			return
		}
	}
}

// timerMayNack reports whether the timer may NACK the message k: not a
// TOOL_RESULT whose fragment 0 (which names its call) is not in. That may
// be a late copy of a fragment of a result already taken (tools.go), and
// a device that has no result outstanding reads a NACK under the INFER's
// seq as one for its prompt. A real result with its fragment 0 lost is
// NACKed when its last fragment or the device's probe comes. Called with
// s.mu held.
func (s *session) timerMayNack(k gapKey) bool {
	if k.cmd != serialproto.CmdToolResult {
		return true
	}
	_, first := s.reasm.Partial(k.cmd, k.seq)
	return first
}
