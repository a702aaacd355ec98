package device

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// exchange sends frames and waits for an answer with the request's seq,
// retransmitting (resend(attempt)) on every RTO. handle returns done=true
// when the answer is complete.
//
// keepalive, when it returns true, makes a timeout not count as a failed
// attempt: while the daemon streams an answer it is the one retransmitting,
// and the device only has to stay alive (a slow engine is not a dead link).
func (c *Client) exchange(ctx context.Context, seq uint8, resend func(attempt int) error, handle func(f serialproto.Frame, m serialproto.Message) (bool, error), keepalive func() bool) error {
	sentAt := time.Now()
	if err := resend(0); err != nil {
		return err
	}
	streaming := func() bool { return keepalive != nil && keepalive() }
	attempt, heard := 1, time.Now()
	// Karn's rule (§7.2): only an answer to a request sent once measures
	// the round trip; any repeat makes it ambiguous.
	once := true
	corrupt := 0      // NACK BAD_FRAME answers while not streaming
	var lastBad error // the last frame of ours whose body did not parse
	// Each attempt's deadline is fixed when it starts: frames of other
	// requests must not push our retransmission back.
	next := func() time.Time {
		wait := min(c.rtt.RTO()<<min(attempt-1, 12), max(serialproto.MaxRTO, c.cfg.RTO))
		if streaming() {
			wait = min(c.keepaliveInterval(), wait)
		}
		return time.Now().Add(wait)
	}
	deadline := next()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		dl := deadline
		if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
			dl = cdl
		}
		f, err := c.t.Recv(dl)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if cdl, ok := ctx.Deadline(); ok && !time.Now().Before(cdl) {
				// ctx's own timer may not have fired yet: without this,
				// every retransmission would go out at once.
				return context.DeadlineExceeded
			}
			if streaming() {
				// The daemon retransmits a stream; if nothing at all comes
				// for three heartbeats it has given up or gone. On a cable
				// a frame that fails its CRC is the daemon still sending:
				// at a bit error rate of 1e-3 two in three 133-byte chunks
				// fail, and a hole can take the daemon a dozen resends
				// backed off to 4 s apart to fill (protocol.md §10).
				last := heard
				if n, ok := c.t.(noisyLine); ok && n.lastCorrupt().After(last) {
					last = n.lastCorrupt()
				}
				if time.Since(last) > 6*c.keepaliveInterval() { // three heartbeats
					return fmt.Errorf("%w: silent for %v%s", ErrTimeout, time.Since(heard).Round(time.Second), malformedNote(lastBad))
				}
			} else if attempt > c.cfg.Retries && time.Since(sentAt) >= serialproto.RetryHorizon(c.cfg.RTO, c.cfg.Retries) {
				// Both the count and the time are spent: a low RTO the
				// estimate learned retransmits sooner, not gives up sooner.
				return fmt.Errorf("%w (%d retransmissions): %v%s", ErrTimeout, c.cfg.Retries, err, malformedNote(lastBad))
			}
			once = false
			if err := resend(attempt); err != nil {
				return err
			}
			if !streaming() {
				attempt++
				c.resent++
			}
			deadline = next()
			continue
		}
		if f.Cmd == serialproto.CmdNack && len(f.Data) == 1 && f.Data[0] == serialproto.NackBadFrame {
			// The daemon saw a corrupt frame (serial, §7.1): likely ours, so
			// repeat now rather than wait for the timer — counted, so a
			// line that corrupts everything still ends in ErrTimeout. The
			// NACK proves the line and the daemon alive, and it may answer
			// noise or an earlier request's ACK rather than this request,
			// so it has its own, larger budget and does not lengthen the
			// timer's back-off: at BER 1e-3 three in four 128-byte frames
			// are corrupt, and Retries NACKs in a row happen.
			if !streaming() {
				if corrupt++; corrupt > 4*c.cfg.Retries {
					return fmt.Errorf("%w: every frame arrives corrupt (%d NACK BAD_FRAME)", ErrTimeout, corrupt-1)
				}
			}
			once = false
			if err := resend(max(attempt-1, 1)); err != nil {
				return err
			}
			continue
		}
		if f.Seq != seq {
			c.reackFinished(f) // a late answer to an earlier request
			continue
		}
		heard = time.Now()
		if c.verifier != nil {
			var err error
			orig := f
			if f, _, _, err = c.verifier.Verify(f); err != nil {
				if e := c.advisoryNoSession(orig); e != nil && !streaming() {
					return e
				}
				continue // unsigned, forged or replayed: not from our daemon
			}
		} else if f.Flags&serialproto.FlagSigned != 0 && len(f.Data) >= serialproto.SignatureLen {
			// The signed WELCOME: its body holds the nonce its tag needs;
			// Hello verifies it before trusting it.
			f.Data = f.Data[:len(f.Data)-serialproto.SignatureLen]
		}
		if once {
			switch f.Cmd {
			case serialproto.CmdAck, serialproto.CmdWelcome, serialproto.CmdPong, serialproto.CmdStatusReply, serialproto.CmdBye:
				// The daemon answers these at once; a TOKEN or a stream's
				// ERROR may wait for the engine, a NACK for half an RTO.
				c.rtt.Sample(heard.Sub(sentAt))
				once = false
			}
		}
		m, err := serialproto.ParseBody(f.Cmd, f.Data)
		if err != nil {
			err = fmt.Errorf("device: daemon sent a bad %s: %w", f.Cmd, err)
			if _, line := c.t.(noisyLine); !line {
				return err // a datagram has its own checksum: a daemon's bug
			}
			// On a cable a daemon's frame whose body does not parse is a
			// corruption the CRC-8 missed (1 in 308 corrupted full frames,
			// protocol.md §2.3): a TOKEN cut inside a character, an ACK of
			// the wrong size. Dropped like a frame that failed its CRC, it
			// is repaired the same way — the daemon resends what we do not
			// acknowledge, we resend what it does not answer.
			lastBad = err
			continue
		}
		done, err := handle(f, m)
		if done || err != nil {
			return err
		}
	}
}

// advisoryNoSession is the unsigned ERROR NO_SESSION f carries, for a
// device that resumes its conversation (Config.Resume), else nil. A signed
// session's daemon that restarted has no key to sign it with, so it can
// only say so unsigned: an advisory (protocol.md §9.2) such a device may
// act on by saying HELLO again — the signed WELCOME proves the daemon, and
// the new session resumes the conversation (from the old session, should
// the ERROR be forged), so a forgery costs a round trip. Any other
// device keeps ignoring it and retransmits.
func (c *Client) advisoryNoSession(f serialproto.Frame) *serialproto.Error {
	if !c.cfg.Resume || f.Cmd != serialproto.CmdError || f.Flags&serialproto.FlagSigned != 0 {
		return nil
	}
	m, err := serialproto.ParseBody(f.Cmd, f.Data)
	if e, ok := m.(*serialproto.Error); err == nil && ok && e.Code == serialproto.CodeNoSession {
		return e
	}
	return nil
}

// noisyLine is a transport that knows when a frame last arrived corrupt:
// a byte stream (Stream, Replug), where only the daemon sends.
type noisyLine interface {
	lastCorrupt() time.Time
}

// malformedNote adds the last unparseable frame to a timeout's error.
func malformedNote(err error) string {
	if err == nil {
		return ""
	}
	return "; last dropped: " + strings.TrimPrefix(err.Error(), "device: ")
}
