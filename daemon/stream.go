package daemon

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// errGaveUp: the device stopped acknowledging the stream.
var errGaveUp = errors.New("daemon: device stopped acknowledging; stream abandoned")

// finalFunc builds the final chunk (DONE or ERROR) once the text is all
// sent: it gets the chunk index and the stream's byte count and CRC-32C.
type finalFunc func(chunk uint16, textBytes, textCRC uint32) serialproto.Message

// stream sends one request's answer (docs/protocol.md §8): TOKEN chunks cut
// from the engine's text only when the device's credit window has room, so
// a slow link gets full frames and a fast one gets low latency; then the
// final chunk. Without SACK it retransmits go-back-N on timeout or on two
// duplicate ACKs; with SACK (§8.2) it resends only the holes: a chunk is
// lost once a chunk sent after it is acknowledged, and on timeout every
// chunk the device has not listed. Its timer is the session's RFC 6298
// estimate, fed by chunks sent once (Karn's rule), doubled per timeout up
// to 4 s; it gives up after maxRetransmits timeouts without progress
// once serialproto.RetryHorizon has passed too.
type stream struct {
	peer           Peer
	version        uint8
	seq            uint8
	limit          int // text bytes per TOKEN frame
	flush          time.Duration
	rtt            *rttState // the session's round-trip estimate
	sack           bool      // the device acknowledges selectively (§8.2)
	maxRetransmits int
	initialRTO     time.Duration                                  // the peer's RTO before any sample: the give-up time's base
	onSend         func(cmd serialproto.Command, retransmit bool) // metrics hook; may be nil
	// gate, while set, must pass every transmission (its size in bytes)
	// before it goes out: the reflection bound of an unproven source
	// (§7.2), until the device acknowledges a chunk of this stream. A
	// transmission it refuses is lost, like one the network dropped.
	gate  func(n int) bool
	seal  *sealer // encodes (and signs) each transmission
	clock clock

	wake     chan struct{}
	quit     chan struct{} // closed by abandon
	quitOnce sync.Once

	mu           sync.Mutex
	text         serialproto.TextBuffer
	pendingSince time.Time // arrival of the oldest text not yet cut
	final        finalFunc // set when the engine is done
	finalCut     bool
	frames       []serialproto.Frame // every chunk cut so far, encoded at each transmission (a signed retransmission is a new frame, §9.2)
	meta         []chunkMeta         // per chunk: its transmissions, and what the device said of it
	xmits        uint64              // transmissions so far: a chunk's order is its last one's number
	textBytes    uint32
	textCRC      uint32
	acked        int // the device's "next"
	window       int
	sent         int // next chunk to transmit (with SACK: the next new one; holes are marked lost)
	highest      int // chunks ever transmitted: below it a send is a retransmission
	dupAcks      int
	retries      int
	stalledAt    time.Time // the transmission whose timer began the current run of timeouts
	lastSend     time.Time
	// A tool call (§16) waits in call until the text before it is cut,
	// then becomes chunk callAt; callAcked closes when the device has
	// acknowledged it.
	call      *serialproto.ToolCall
	callAt    int
	callAcked chan struct{}
}

// chunkMeta is what the sender knows of one chunk.
type chunkMeta struct {
	sentAt time.Time // its last transmission
	order  uint64    // that transmission's number (stream.xmits)
	sends  uint16    // how often it went out
	sacked bool      // the device listed it (or acknowledged it cumulatively)
	lost   bool      // to be resent: a later-sent chunk arrived, or the timer expired
}

func newStream(p Peer, seal *sealer, clk clock, rtt *rttState, sack bool, version, seq uint8, maxData, window int, flush time.Duration, maxRetransmits int) *stream {
	return &stream{
		peer: p, seal: seal, clock: clk, version: version, seq: seq,
		limit:          serialproto.BodyLimit(maxData, seal.signed()) - 2,
		flush:          flush,
		rtt:            rtt,
		sack:           sack,
		maxRetransmits: maxRetransmits,
		initialRTO:     p.RTO(window),
		window:         window,
		wake:           make(chan struct{}, 1),
		quit:           make(chan struct{}),
		lastSend:       clk.Now(), // the clock for a window closed from the start
		callAt:         -1,
	}
}

func (s *stream) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// write takes a piece of engine output; it never blocks on the device.
func (s *stream) write(piece []byte) error {
	s.mu.Lock()
	if s.text.Len() == 0 {
		s.pendingSince = s.clock.Now()
	}
	_, _ = s.text.Write(piece)
	s.mu.Unlock()
	s.notify()
	return nil
}

// finish records how the stream ends; the final chunk follows the text.
func (s *stream) finish(f finalFunc) {
	s.mu.Lock()
	s.final = f
	s.call = nil // a call not yet sent is not sent: the request is over
	s.mu.Unlock()
	s.notify()
}

// ack applies the device's acknowledgement — cumulative, plus its SACK
// bitmap when the session has SACK; it reports whether the whole stream,
// final chunk included, is now acknowledged.
func (s *stream) ack(next, window int, sack []byte) (complete bool) {
	s.mu.Lock()
	if next <= s.highest {
		s.delivered(next, sack)
	}
	switch {
	case next > len(s.frames):
		// Acknowledges chunks never sent: ignore (a confused or hostile peer).
	case next > s.acked:
		s.acked, s.dupAcks, s.retries = next, 0, 0
		s.gate = nil // the source takes this stream's chunks: it is where it says
		s.sent = max(s.sent, next)
	case s.sack:
		// Losses are the bitmap's business (delivered); a repeated ACK is
		// no news.
	case next == s.acked && s.acked < s.sent && window == s.window:
		// A duplicate: next and window as in the ACK before, chunks from
		// next on outstanding. The ACK that moved next here is not one, and
		// one that changes the window is a window update — the device
		// freed or filled its buffer — not news of a loss (§8.2).
		s.dupAcks++
		if s.dupAcks >= 2 { // fast retransmit (§8.2)
			s.sent, s.dupAcks = s.acked, 0
		}
	}
	s.window = window
	if s.callAt >= 0 && s.acked > s.callAt {
		close(s.callAcked)
		s.callAt = -1
	}
	complete = s.finalCut && s.acked == len(s.frames)
	s.mu.Unlock()
	s.notify()
	return complete
}

// delivered notes the chunks an ACK reports for the first time: those
// below next and, with SACK, those its bitmap lists. The most recently sent
// of them that went out once gives a round-trip sample (Karn's rule), and
// with SACK every chunk outstanding that was sent before it is lost (§8.2).
// Called with mu held; next is at most highest.
func (s *stream) delivered(next int, bitmap []byte) {
	now := s.clock.Now()
	newest, sampleAt := uint64(0), -1
	mark := func(i int) {
		m := &s.meta[i]
		if m.sacked {
			return
		}
		m.sacked, m.lost = true, false
		if m.order > newest {
			newest = m.order
			sampleAt = -1
			if m.sends == 1 {
				sampleAt = i
			}
		}
	}
	for i := s.acked; i < next; i++ {
		mark(i)
	}
	if s.sack {
		ack := serialproto.Ack{SACK: bitmap}
		for i := range 8 * len(bitmap) {
			if c := next + 1 + i; c < s.highest && ack.Sacked(i) {
				mark(c)
			}
		}
	}
	if sampleAt >= 0 {
		s.rtt.sample(now.Sub(s.meta[sampleAt].sentAt))
	}
	if !s.sack || newest == 0 {
		return
	}
	for i := next; i < s.highest; i++ {
		if m := &s.meta[i]; !m.sacked && m.order < newest {
			m.lost = true
		}
	}
}

// nextToSend picks the chunk to transmit now, if any: with SACK the oldest
// lost chunk, else the next new one, within the window. Called with mu held.
func (s *stream) nextToSend() (int, bool) {
	limit := min(len(s.frames), s.acked+s.window)
	if s.sack {
		for i := s.acked; i < min(s.highest, limit); i++ {
			if m := &s.meta[i]; m.lost && !m.sacked {
				return i, true
			}
		}
	}
	if s.sent < limit {
		return s.sent, true
	}
	return 0, false
}

// run transmits until the final chunk is acknowledged, the device stops
// answering, or ctx ends.
func (s *stream) run(ctx context.Context) error {
	timer := s.clock.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := s.clock.Now()
		s.cut(now)
		for {
			i, ok := s.nextToSend()
			if !ok {
				break
			}
			frame := s.frames[i]
			m := &s.meta[i]
			retransmit := m.sends > 0
			s.xmits++
			m.sentAt, m.order, m.lost = now, s.xmits, false
			m.sends++
			if i == s.sent {
				s.sent++
			}
			s.highest = max(s.highest, i+1)
			s.lastSend = now
			s.mu.Unlock()
			// A failed send is a lost frame (an unplugged UART, a full
			// socket buffer), and so is one the gate holds back:
			// retransmission repairs it or the retry budget ends the stream.
			s.transmit(frame, func() {
				// Counted before it leaves: a device that has the frame must
				// find it in the counters (counted after, a test or an
				// operator reading /metrics could see a retransmitted chunk
				// arrive before its count).
				if s.onSend != nil {
					s.onSend(frame.Cmd, retransmit)
				}
			})
			s.mu.Lock()
		}
		if s.finalCut && s.acked == len(s.frames) {
			// Only the final chunk can be asked for again (a CANCEL that
			// crossed it); the text is delivered and need not be kept for
			// the 32 requests a session remembers.
			clear(s.frames[:len(s.frames)-1]) // drops the text; the Frame headers are tiny
			s.mu.Unlock()
			return nil
		}
		wait := time.Hour
		if s.acked < s.sent || s.window == 0 {
			wait = min(wait, s.lastSend.Add(s.backoff()).Sub(now))
		}
		// Wake for the flush deadline only while it lies ahead: once passed,
		// cut has flushed what it could, and what remains (the first bytes of
		// a character) waits for the engine's next write.
		if flushAt := s.pendingSince.Add(s.flush); s.text.Len() > 0 && len(s.frames) < s.acked+s.window && now.Before(flushAt) {
			wait = min(wait, flushAt.Sub(now))
		}
		s.mu.Unlock()
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.quit:
			return errSuperseded
		case <-s.wake:
		case <-timer.C():
			probe, err := s.timeout(s.clock.Now())
			if err != nil {
				return err
			}
			if probe != nil {
				s.transmit(*probe, nil)
			}
		}
	}
}

// backoff is the current RTO: the session's estimate, doubled per
// retransmission timeout without progress, at most 4 s (§7.2).
func (s *stream) backoff() time.Duration {
	return min(s.rtt.rto()<<min(s.retries, 12), serialproto.MaxRTO)
}

// timeout handles an expired retransmission timer: go back to the oldest
// unacknowledged chunk. With the window closed it returns a probe to send:
// the last chunk the device acknowledged, which it answers with its current
// ACK (§8.2) — sent outside the window, never opening it. Probes count as
// retransmissions: a device that keeps its window shut for the whole retry
// budget (about 25 s on UDP) is given up, so it cannot park answers here.
func (s *stream) timeout(now time.Time) (probe *serialproto.Frame, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSend) < s.backoff() {
		return nil, nil
	}
	switch {
	case s.sack && s.acked < s.highest:
		listed := true
		for i := s.acked; i < s.highest; i++ {
			if m := &s.meta[i]; !m.sacked {
				m.lost, listed = true, false
			}
		}
		if last := s.highest - 1; listed || (s.finalCut && last == len(s.frames)-1 && s.meta[last].sacked) {
			// The device listed every chunk outstanding, or holds the final
			// one, yet no ACK moved next past them: the ACK that did may
			// have been lost (the device took the chunks and, with the
			// final one, ended). Probe with the last chunk sent as well as
			// resending the holes: the device answers it with its current
			// ACK, a finished device with its final ACK again (§8.2) — a
			// device that keeps no memory of ended streams acknowledges
			// only a final chunk. Without it the stream waited for an ACK
			// that would never come until its retries ran out, holding one
			// of the device's places.
			probe = &s.frames[last]
			s.lastSend = now
		}
	case s.acked < s.sent:
		s.sent = s.acked
	case s.window == 0:
		if s.acked > 0 {
			probe = &s.frames[s.acked-1]
		}
		s.lastSend = now
	default:
		return nil, nil
	}
	if s.retries == 0 {
		s.stalledAt = s.lastSend
	}
	s.retries++
	// Both the count and the time must be spent (serialproto.RetryHorizon):
	// an RTO learned on a fast link retransmits sooner, not gives up sooner.
	if s.retries > s.maxRetransmits && now.Sub(s.stalledAt) >= serialproto.RetryHorizon(s.initialRTO, s.maxRetransmits) {
		return nil, errGaveUp
	}
	return probe, nil
}

// cut turns buffered text into TOKEN frames while the window has room,
// and appends the final chunk once the text is out. Called with mu held.
func (s *stream) cut(now time.Time) {
	for !s.finalCut && len(s.frames) < s.acked+s.window {
		n := s.text.Len()
		done := s.final != nil || s.call != nil // all text goes out before a call
		if n == 0 {
			if s.call != nil {
				s.call.Chunk = uint16(len(s.frames))
				s.callAt = len(s.frames)
				s.appendFrame(s.call)
				s.call = nil
				continue
			}
			if done {
				s.appendFrame(s.final(uint16(len(s.frames)), s.textBytes, s.textCRC))
				s.finalCut = true
			}
			return
		}
		if n < s.limit && !done && now.Sub(s.pendingSince) < s.flush && s.inFlight() >= s.nagle() {
			return // the link is busy: wait for more text to fill the frame
		}
		text := s.text.Next(nil, s.limit, done)
		if len(text) == 0 {
			return // an incomplete UTF-8 character waits for its rest
		}
		s.textBytes += uint32(len(text))
		s.textCRC = serialproto.UpdateCRC32C(s.textCRC, text)
		s.appendFrame(&serialproto.Token{Chunk: uint16(len(s.frames)), Text: text})
		if s.text.Len() > 0 {
			s.pendingSince = now
		}
	}
}

// inFlight counts the chunks cut but not yet acknowledged. Called with mu held.
func (s *stream) inFlight() int { return len(s.frames) - s.acked }

// nagle is how many unacknowledged chunks the stream allows before it holds
// a partly filled frame back for more text (§8.3): half the device's
// window, rounded up. Below it the link is keeping up and text goes out at
// once, so the first token never waits for the flush interval; at it, the
// device has not yet acknowledged — as it SHOULD once half its window is
// free (§8.2) — and waiting fills frames. A window of 1 allows one chunk.
func (s *stream) nagle() int { return (s.window + 1) / 2 }

func (s *stream) appendFrame(m serialproto.Message) {
	if e, ok := m.(*serialproto.Error); ok {
		e.Fit(s.limit + 2) // the final ERROR fits the device's frames like the TOKENs
	}
	body, err := m.AppendBody(nil)
	cmd := m.Command()
	if err != nil { // our own message: a bug, but never send garbage
		cmd = serialproto.CmdError
		body, _ = serialproto.NewError(serialproto.CodeInternal, "encoding failed").AppendBody(nil)
	}
	s.frames = append(s.frames, serialproto.Frame{Version: s.version, Cmd: cmd, Seq: s.seq, Data: body})
	s.meta = append(s.meta, chunkMeta{})
}

// abandon stops the stream for good: nothing more is sent, not even a
// retransmission, because a new request now has its seq and any chunk of
// ours would pass for one of that request's (§5).
func (s *stream) abandon() { s.quitOnce.Do(func() { close(s.quit) }) }

// rewind answers NACK BAD_FRAME (the device saw a corrupt frame, §7.1):
// go-back-N from the oldest unacknowledged chunk; with SACK only the chunk
// sent earliest of those the device has not listed (nor is already to be
// resent) — the device acknowledges every chunk it gets, and the ACKs of
// all sent before the corrupt one came ahead of the NACK on the line.
func (s *stream) rewind() {
	s.mu.Lock()
	if s.sack {
		oldest := -1
		for i := s.acked; i < s.highest; i++ {
			if m := &s.meta[i]; !m.sacked && !m.lost && (oldest < 0 || m.order < s.meta[oldest].order) {
				oldest = i
			}
		}
		if oldest >= 0 {
			s.meta[oldest].lost = true
		}
	} else {
		s.sent = s.acked
	}
	s.mu.Unlock()
	s.notify()
}

// resendFinal repeats the final chunk of a stream that has ended and been
// acknowledged: the answer to a CANCEL that crossed it.
func (s *stream) resendFinal() {
	s.mu.Lock()
	done := s.finalCut && s.acked == len(s.frames)
	var final serialproto.Frame
	if done {
		final = s.frames[len(s.frames)-1]
	}
	s.mu.Unlock()
	if done {
		s.transmit(final, nil)
	}
}

// transmit encodes (and signs) one transmission of f and, if the gate lets
// it, calls counted (may be nil) and sends it. Called without mu.
func (s *stream) transmit(f serialproto.Frame, counted func()) {
	raw, err := s.seal.seal(f)
	if err != nil {
		return
	}
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil && !gate(len(raw)) {
		return
	}
	if counted != nil {
		counted()
	}
	_ = s.peer.Send(raw)
}
