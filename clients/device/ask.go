package device

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Ask sends a prompt and streams the answer to onText, which sees each
// TOKEN's text once, in order. It returns DONE, or the daemon's *serialproto.Error
// (usable with errors.As). If ctx ends mid-answer, Ask sends CANCEL and
// waits briefly for the stream's end.
func (c *Client) Ask(ctx context.Context, m *serialproto.Infer, onText func([]byte) error) (*serialproto.Done, error) {
	if c.welcome.Version == 0 {
		return nil, ErrNoSession
	}
	c.seq++
	seq := c.seq
	return c.askInSession(ctx, &seq, m, onText)
}

// askInSession is ask, recovering from a session the daemon lost before
// the request was accepted (protocol.md §10): NO_SESSION to an INFER of
// which the device has seen nothing — no ACK, no chunk — is answered by a
// new HELLO and the same INFER under a new seq. Exactly once holds: the
// lost session's requests ended silently, so nothing of a first run can
// reach the device, and the answer it gets is the only one (the engine may
// have started the prompt twice). Not once text has come (onText would see
// it twice), nor when the prompt continues a conversation the lost session
// held (the new one has no history) — unless the device asks to resume
// it (Config.Resume) and the new session did: those return the NO_SESSION
// error. seq is updated to the request's seq in the new session.
func (c *Client) askInSession(ctx context.Context, seq *uint8, m *serialproto.Infer, onText func([]byte) error) (*serialproto.Done, error) {
	done, accepted, err := c.ask(ctx, *seq, m, onText)
	var perr *serialproto.Error
	if fresh := c.turns == 0 || m.Set.Has(serialproto.OptNewChat); !accepted && errors.As(err, &perr) &&
		perr.Code == serialproto.CodeNoSession && (fresh || c.cfg.Resume) {
		if herr := c.Hello(ctx); herr != nil {
			return nil, fmt.Errorf("%w (reopening the session: %w)", err, herr)
		}
		if !fresh && !c.Resumed() {
			return nil, err // the daemon kept no conversation to continue
		}
		c.seq++
		*seq = c.seq
		done, _, err = c.ask(ctx, *seq, m, onText)
	}
	if done != nil { // the daemon keeps the turn (§10)
		if m.Set.Has(serialproto.OptNewChat) {
			c.turns = 0
		}
		c.turns++
	}
	return done, err
}

// AskRetrying is Ask for a device that retries a refused request — BUSY or
// RATE_LIMITED, before any text — after a back-off of 200 ms × 2ⁿ,
// jittered, at most 5 s, up to retries times (protocol.md §12). It
// retransmits the same INFER with the same seq, never a new request: a
// delayed copy of the refused INFER may still reach the daemon and be
// accepted once there is room, and with one seq that copy and the retry
// are one request, which runs once (§5). It returns how often it retried.
func (c *Client) AskRetrying(ctx context.Context, m *serialproto.Infer, onText func([]byte) error, retries int) (*serialproto.Done, int, error) {
	if c.welcome.Version == 0 {
		return nil, 0, ErrNoSession
	}
	c.seq++
	seq := c.seq
	for attempt := 0; ; attempt++ {
		done, err := c.askInSession(ctx, &seq, m, onText)
		var perr *serialproto.Error
		if attempt >= retries || !errors.As(err, &perr) || perr.Stream() ||
			(perr.Code != serialproto.CodeBusy && perr.Code != serialproto.CodeRateLimited) {
			return done, attempt, err
		}
		backoff := min(200*time.Millisecond<<attempt, 5*time.Second)
		select {
		case <-time.After(backoff/2 + rand.N(backoff/2)):
		case <-ctx.Done():
			return nil, attempt, ctx.Err()
		}
	}
}

// ask sends the INFER under seq and streams its answer; accepted reports
// whether the daemon acknowledged it or sent any of its answer.
func (c *Client) ask(ctx context.Context, seq uint8, m *serialproto.Infer, onText func([]byte) error) (_ *serialproto.Done, accepted bool, _ error) {
	body, err := m.AppendBody(nil)
	if err != nil {
		return nil, false, err
	}
	frames, err := c.messageFrames(serialproto.CmdInfer, seq, body)
	if err != nil {
		return nil, false, err
	}
	send := func(f serialproto.Frame) error { // encoded (and signed) anew each time
		raw, err := c.encode(f)
		if err != nil {
			return err
		}
		return c.t.Send(raw)
	}
	var (
		next    uint16
		crc     uint32
		size    uint32
		done    *serialproto.Done
		missing []byte
		nacks   int
		// held are chunks that came after a gap, kept (with SACK, §8.2)
		// until the gap is filled: copies, as frames are reused.
		held  map[uint16]serialproto.Message
		final error // the stream's closing ERROR
		// A TOOL_CALL delivered in order (§16) runs once; its result is
		// probed, backed off, until the stream moves on. An ACK does not
		// end the probes: it names no call, and the previous result's
		// (reordered behind this call, or answering a late copy of that
		// result) looks the same — taken as this one's while this one was
		// lost, the daemon ended the request with TOOL_TIMEOUT.
		call          *serialproto.ToolCall
		result        []serialproto.Frame
		resultMissing []byte
		probes        int       // of the result, after its first sending
		probeAt       time.Time // the next probe's time
	)
	ack := func() error {
		a := serialproto.Ack{Next: next, Window: c.cfg.Window}
		if len(held) > 0 {
			var buf [serialproto.MaxSACKBytes]byte
			a.SACK = buf[:0]
			for k := range held {
				a.SACK = serialproto.SetSACK(a.SACK, int(k-next)-1)
			}
		}
		return c.sendMsg(seq, &a)
	}
	// deliver takes the chunk expected next; it reports whether it was the
	// final one.
	deliver := func(msg serialproto.Message) (bool, error) {
		next++
		result = nil // a chunk after the call: the daemon has the result
		switch msg := msg.(type) {
		case *serialproto.ToolCall:
			call = &serialproto.ToolCall{Chunk: msg.Chunk, Call: msg.Call, Tool: msg.Tool, Args: append([]byte(nil), msg.Args...)}
			return false, nil
		case *serialproto.Token:
			size += uint32(len(msg.Text))
			crc = serialproto.UpdateCRC32C(crc, msg.Text)
			return false, onText(msg.Text)
		case *serialproto.Done:
			done = msg
		case *serialproto.Error:
			final = msg
		}
		c.finish(seq, next)
		return true, nil
	}
	// chunk handles a chunk of the answer stream: in order it is delivered
	// with whatever it releases from held; after a gap it is held (with
	// SACK, within the window) or dropped (go-back-N); either way the
	// device acknowledges again.
	chunk := func(index uint16, msg serialproto.Message) (bool, error) {
		accepted = true
		switch {
		case index == next:
			end, err := deliver(msg)
			for !end && err == nil && held[next] != nil {
				m := held[next]
				delete(held, next)
				end, err = deliver(m)
			}
			if err != nil {
				return true, err
			}
			if end {
				_ = ack()
				return true, final
			}
			if call != nil { // acknowledged first: the daemon's tool timeout starts
				if err := ack(); err != nil {
					return true, err
				}
				res := c.toolAnswer(ctx, call)
				call = nil
				body, err := res.AppendBody(nil)
				if err == nil {
					result, err = c.messageFrames(serialproto.CmdToolResult, seq, body)
				}
				if err != nil {
					return true, err
				}
				probes, probeAt = 0, time.Now().Add(c.rtt.RTO())
				return false, c.resendMessage(result, 0, nil)
			}
		case c.sack() && index > next && index-next < uint16(c.cfg.Window) && held[index] == nil:
			if held == nil {
				held = make(map[uint16]serialproto.Message)
			}
			held[index] = copyChunk(msg)
		}
		return false, ack()
	}
	resend := func(attempt int) error {
		switch {
		case attempt == 0: // the whole message
			for _, f := range frames {
				if err := send(f); err != nil {
					return err
				}
			}
		case missing != nil: // what the daemon asked for
			for _, i := range missing {
				if int(i) < len(frames) {
					if err := send(frames[i]); err != nil {
						return err
					}
				}
			}
			missing = nil
		case !accepted: // probe with the last fragment (§6)
			return send(frames[len(frames)-1])
		case result != nil && probes < c.cfg.Retries && !time.Now().Before(probeAt):
			// A tool's result the stream has not gone on from: probe.
			probes++
			probeAt = time.Now().Add(min(c.rtt.RTO()<<min(probes, 12), serialproto.MaxRTO))
			return c.resendMessage(result, 1, &resultMissing)
		default: // streaming: repeat our ACK in case it was lost
			return ack()
		}
		return nil
	}
	err = c.exchange(ctx, seq, resend, func(f serialproto.Frame, msg serialproto.Message) (bool, error) {
		switch msg := msg.(type) {
		case *serialproto.Ack:
			accepted = true // with a result out, perhaps its ACK: not proof (above)
		case *serialproto.Nack:
			if result != nil {
				if msg.Reason == serialproto.NackMissing {
					resultMissing = append([]byte(nil), msg.Missing...)
					return false, c.resendMessage(result, 1, &resultMissing)
				}
				return false, c.resendMessage(result, 0, nil)
			}
			if nacks++; nacks > c.cfg.Retries {
				return true, fmt.Errorf("%w: the daemon keeps asking for the prompt again (%d NACKs)", ErrTimeout, nacks)
			}
			switch msg.Reason {
			case serialproto.NackMissing:
				missing = append([]byte(nil), msg.Missing...)
				return false, resend(1)
			case serialproto.NackBadChecksum, serialproto.NackBadFrame:
				return false, resend(0)
			}
		case *serialproto.Token:
			return chunk(msg.Chunk, msg)
		case *serialproto.Done:
			return chunk(msg.Chunk, msg)
		case *serialproto.ToolCall:
			return chunk(msg.Chunk, msg)
		case *serialproto.Error:
			if msg.Stream() {
				return chunk(msg.Chunk, msg)
			}
			if accepted && msg.Code != serialproto.CodeNoSession {
				// An ERROR answering our outstanding TOOL_RESULT (§16,
				// device side): stop resending it; the stream's final
				// chunk follows.
				result = nil
				// Only the stream's own final chunk ends an accepted INFER
				// (§11.7). This ERROR answers another frame of ours — an ACK
				// the line mangled into an unknown command or version that
				// still passed the CRC-8 — and the stream goes on.
				return false, nil
			}
			return true, msg
		}
		return false, nil
	}, func() bool { return accepted })
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		c.cancel(seq, next)
		return nil, accepted, err
	}
	if err != nil {
		return nil, accepted, err
	}
	if done == nil {
		return nil, accepted, errors.New("device: the stream ended without DONE") // unreachable: deliver sets one of done, final
	}
	if done.TextBytes != size || done.TextCRC32C != crc {
		return done, accepted, fmt.Errorf("%w: DONE says %d bytes crc %08x, received %d bytes crc %08x", ErrChecksum, done.TextBytes, done.TextCRC32C, size, crc)
	}
	return done, accepted, nil
}

// copyChunk copies a chunk that must outlive its frame (§8.2's held chunks).
func copyChunk(m serialproto.Message) serialproto.Message {
	switch m := m.(type) {
	case *serialproto.Token:
		return &serialproto.Token{Chunk: m.Chunk, Text: append([]byte(nil), m.Text...)}
	case *serialproto.ToolCall:
		return &serialproto.ToolCall{Chunk: m.Chunk, Call: m.Call, Tool: m.Tool, Args: append([]byte(nil), m.Args...)}
	case *serialproto.Done:
		d := *m
		return &d
	case *serialproto.Error:
		e := *m // Text is a string: already a copy
		return &e
	}
	return m
}
