// Package device is the device side of MCPFrame in Go: what a
// microcontroller's firmware does, for mcpctl and for tests. It follows
// docs/protocol.md: HELLO, fragmented INFER with retransmission, the answer
// stream with cumulative ACKs and a credit window, and the DONE checksum.
package device

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	sp "github.com/mcpd-project/mcpd/serialproto"
)

// ErrTimeout: the daemon did not answer within the retransmission budget.
var ErrTimeout = errors.New("device: no answer from the daemon")

// ErrChecksum: the reassembled answer does not match DONE's size or CRC-32C.
var ErrChecksum = errors.New("device: answer checksum mismatch")

// Transport carries frames to and from the daemon.
type Transport interface {
	Send(frame []byte) error
	// Recv returns the next sound frame before deadline, or an error
	// wrapping os.ErrDeadlineExceeded. Frame.Data is valid until the next
	// call.
	Recv(deadline time.Time) (sp.Frame, error)
	Close() error
}

// Config describes the simulated device.
type Config struct {
	DeviceID string
	MaxData  uint16        // largest data field it accepts; default 256
	Window   uint8         // chunks it buffers; default 4
	MaxSend  int           // largest data field it sends (smaller frames survive a noisy line); default: the daemon's limit
	RTO      time.Duration // retransmission timeout; default 250 ms
	Key      sp.Key        // the device's signing key; zero: an unsigned session
	LinkID   uint8         // this link's id in signatures (0 UART, 1 Wi-Fi, ...)
	Retries  int           // retransmissions before giving up; default 8
}

// Client is one device's session with the daemon. Not safe for concurrent
// use: a microcontroller does one thing at a time.
type Client struct {
	t       Transport
	cfg     Config
	seq     uint8
	welcome sp.Welcome
	out     []byte
	nonce   uint32

	// Signing (docs/protocol.md §9): the session's signer and verifier,
	// created from the WELCOME's daemon nonce.
	signer   *sp.Signer
	verifier *sp.Verifier

	// finished are the last answer streams that ended: each request's seq
	// and the ACK that acknowledged its final chunk, repeated should the
	// daemon retransmit that chunk after we moved on (our ACK was lost).
	// As many as the daemon remembers requests (docs/daemon.md): on a fast
	// link many requests end within one of the daemon's RTOs.
	finished [32]finishedStream
	nfin     int
}

type finishedStream struct {
	valid bool
	seq   uint8
	next  uint16
}

func (c *Client) signing() bool { return !c.cfg.Key.IsZero() }

// encode puts a frame on the wire format: signed in a signed session, so a
// retransmission is a new frame with a new counter (§9.2).
func (c *Client) encode(f sp.Frame) ([]byte, error) {
	if c.signer != nil {
		return c.signer.AppendSigned(nil, f)
	}
	return sp.AppendFrame(nil, f)
}

// New returns a client speaking over t.
func New(t Transport, cfg Config) *Client {
	if cfg.MaxData == 0 {
		cfg.MaxData = sp.MaxData
	}
	if cfg.Window == 0 {
		cfg.Window = 4
	}
	if cfg.RTO <= 0 {
		cfg.RTO = 250 * time.Millisecond
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 8
	}
	if cfg.DeviceID == "" {
		cfg.DeviceID = "mcpctl"
	}
	return &Client{t: t, cfg: cfg, nonce: uint32(time.Now().UnixNano())}
}

// keepaliveInterval is how often a waiting device shows it is alive: well
// inside the daemon's heartbeat (a session expires after 3 missed).
func (c *Client) keepaliveInterval() time.Duration {
	hb := time.Duration(c.welcome.HeartbeatMS) * time.Millisecond
	if hb <= 0 {
		hb = 5 * time.Second
	}
	return max(hb/2, c.cfg.RTO)
}

// Welcome is what the daemon granted.
func (c *Client) Welcome() sp.Welcome { return c.welcome }

func (c *Client) frame(seq uint8, flags sp.Flags, m sp.Message) ([]byte, error) {
	body, err := m.AppendBody(nil)
	if err != nil {
		return nil, err
	}
	return c.encode(sp.Frame{Version: sp.Version1, Cmd: m.Command(), Flags: flags, Seq: seq, Data: body})
}

func (c *Client) sendMsg(seq uint8, m sp.Message) error {
	f, err := c.frame(seq, 0, m)
	if err != nil {
		return err
	}
	return c.t.Send(f)
}

// exchange sends frames and waits for an answer with the request's seq,
// retransmitting (resend(attempt)) on every RTO. handle returns done=true
// when the answer is complete.
//
// keepalive, when it returns true, makes a timeout not count as a failed
// attempt: while the daemon streams an answer it is the one retransmitting,
// and the device only has to stay alive (a slow engine is not a dead link).
func (c *Client) exchange(ctx context.Context, seq uint8, resend func(attempt int) error, handle func(f sp.Frame, m sp.Message) (bool, error), keepalive func() bool) error {
	if err := resend(0); err != nil {
		return err
	}
	streaming := func() bool { return keepalive != nil && keepalive() }
	attempt, heard := 1, time.Now()
	corrupt := 0 // NACK BAD_FRAME answers while not streaming
	// Each attempt's deadline is fixed when it starts: frames of other
	// requests must not push our retransmission back.
	next := func() time.Time {
		wait := c.cfg.RTO << min(attempt-1, 4)
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
			if streaming() {
				// The daemon retransmits a stream; if nothing at all comes
				// for three heartbeats it has given up or gone.
				if time.Since(heard) > 6*c.keepaliveInterval() { // three heartbeats
					return fmt.Errorf("%w: silent for %v", ErrTimeout, time.Since(heard).Round(time.Second))
				}
			} else if attempt > c.cfg.Retries {
				return fmt.Errorf("%w (%d retransmissions): %v", ErrTimeout, c.cfg.Retries, err)
			}
			if err := resend(attempt); err != nil {
				return err
			}
			if !streaming() {
				attempt++
			}
			deadline = next()
			continue
		}
		if f.Cmd == sp.CmdNack && len(f.Data) == 1 && f.Data[0] == sp.NackBadFrame {
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
			if f, _, _, err = c.verifier.Verify(f); err != nil {
				continue // unsigned, forged or replayed: not from our daemon
			}
		} else if f.Flags&sp.FlagSigned != 0 && len(f.Data) >= sp.SignatureLen {
			// The signed WELCOME: its body holds the nonce its tag needs;
			// Hello verifies it before trusting it.
			f.Data = f.Data[:len(f.Data)-sp.SignatureLen]
		}
		m, err := sp.ParseBody(f.Cmd, f.Data)
		if err != nil {
			return fmt.Errorf("device: daemon sent a bad %s: %w", f.Cmd, err)
		}
		done, err := handle(f, m)
		if done || err != nil {
			return err
		}
	}
}

// Hello opens the session.
func (c *Client) Hello(ctx context.Context) error {
	c.seq++
	c.nonce++
	hello := &sp.Hello{MinVersion: 1, MaxVersion: 1, MaxData: c.cfg.MaxData, Window: c.cfg.Window, BootNonce: c.nonce, DeviceID: c.cfg.DeviceID}
	c.signer, c.verifier = nil, nil
	if c.signing() {
		hello.Features |= sp.FeatureSign
		// The HELLO is signed with boot_nonce ‖ 0 (§9.1).
		s, err := sp.NewSigner(c.cfg.Key, sp.DeviceToDaemon, sp.MakeNonce(c.nonce, 0), c.cfg.LinkID, 0)
		if err != nil {
			return err
		}
		c.signer = s
	}
	frame, err := c.frame(c.seq, 0, hello)
	c.signer = nil
	if err != nil {
		return err
	}
	return c.exchange(ctx, c.seq, func(int) error { return c.t.Send(frame) }, func(f sp.Frame, m sp.Message) (bool, error) {
		switch m := m.(type) {
		case *sp.Welcome:
			if c.signing() {
				if err := c.startSigning(f, m); err != nil {
					return false, nil // not our daemon's WELCOME: keep waiting
				}
			}
			c.welcome = *m
			return true, nil
		case *sp.Error:
			return true, m
		}
		return false, nil
	}, nil)
}

// startSigning checks the signed WELCOME w (frame f, its signature block
// still in the frame it came in) and sets up the session's signer and
// verifier from the nonce it carries.
func (c *Client) startSigning(f sp.Frame, w *sp.Welcome) error {
	if f.Flags&sp.FlagSigned == 0 || w.Features&sp.FeatureSign == 0 {
		return errors.New("device: the daemon did not grant signing")
	}
	nonce := sp.MakeNonce(c.nonce, w.DaemonNonce)
	v, err := sp.NewVerifier(c.cfg.Key, sp.DaemonToDevice, nonce)
	if err != nil {
		return err
	}
	whole := f
	whole.Data = f.Data[:len(f.Data)+sp.SignatureLen] // the block exchange set aside
	if _, _, _, err := v.Verify(whole); err != nil {
		return err
	}
	s, err := sp.NewSigner(c.cfg.Key, sp.DeviceToDaemon, nonce, c.cfg.LinkID, 0)
	if err != nil {
		return err
	}
	c.signer, c.verifier = s, v
	return nil
}

// Ping measures a round trip.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	c.seq++
	start := time.Now()
	err := c.exchange(ctx, c.seq, func(int) error { return c.sendMsg(c.seq, &sp.Ping{Data: []byte("mcpd")}) },
		func(f sp.Frame, m sp.Message) (bool, error) {
			if e, ok := m.(*sp.Error); ok {
				return true, e
			}
			return f.Cmd == sp.CmdPong, nil
		}, nil)
	return time.Since(start), err
}

// Status asks for the daemon's state.
func (c *Client) Status(ctx context.Context) (*sp.StatusReply, error) {
	c.seq++
	var reply *sp.StatusReply
	err := c.exchange(ctx, c.seq, func(int) error { return c.sendMsg(c.seq, &sp.Status{}) },
		func(f sp.Frame, m sp.Message) (bool, error) {
			switch m := m.(type) {
			case *sp.StatusReply:
				reply = m
				return true, nil
			case *sp.Error:
				return true, m
			}
			return false, nil
		}, nil)
	return reply, err
}

// Ask sends a prompt and streams the answer to onText, which sees each
// TOKEN's text once, in order. It returns DONE, or the daemon's *sp.Error
// (usable with errors.As). If ctx ends mid-answer, Ask sends CANCEL and
// waits briefly for the stream's end.
func (c *Client) Ask(ctx context.Context, m *sp.Infer, onText func([]byte) error) (*sp.Done, error) {
	if c.welcome.Version == 0 {
		return nil, errors.New("device: Ask before Hello")
	}
	c.seq++
	return c.ask(ctx, c.seq, m, onText)
}

// AskRetrying is Ask for a device that retries a refused request — BUSY or
// RATE_LIMITED, before any text — after a back-off of 200 ms × 2ⁿ,
// jittered, at most 5 s, up to retries times (protocol.md §12). It
// retransmits the same INFER with the same seq, never a new request: a
// delayed copy of the refused INFER may still reach the daemon and be
// accepted once there is room, and with one seq that copy and the retry
// are one request, which runs once (§5). It returns how often it retried.
func (c *Client) AskRetrying(ctx context.Context, m *sp.Infer, onText func([]byte) error, retries int) (*sp.Done, int, error) {
	if c.welcome.Version == 0 {
		return nil, 0, errors.New("device: Ask before Hello")
	}
	c.seq++
	seq := c.seq
	for attempt := 0; ; attempt++ {
		done, err := c.ask(ctx, seq, m, onText)
		var perr *sp.Error
		if attempt >= retries || !errors.As(err, &perr) || perr.Stream() ||
			(perr.Code != sp.CodeBusy && perr.Code != sp.CodeRateLimited) {
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

func (c *Client) ask(ctx context.Context, seq uint8, m *sp.Infer, onText func([]byte) error) (*sp.Done, error) {
	body, err := m.AppendBody(nil)
	if err != nil {
		return nil, err
	}
	piece := sp.PieceSize(int(c.welcome.MaxData), c.signer != nil)
	if c.cfg.MaxSend > 0 {
		piece = min(piece, sp.PieceSize(c.cfg.MaxSend, c.signer != nil))
	}
	datas, err := sp.Fragments(body, piece)
	if err != nil {
		return nil, err
	}
	frames := make([]sp.Frame, len(datas))
	for i, d := range datas {
		frames[i] = sp.Frame{Version: sp.Version1, Cmd: sp.CmdInfer, Flags: sp.FlagFragment, Seq: seq, Data: d}
	}
	send := func(f sp.Frame) error { // encoded (and signed) anew each time
		raw, err := c.encode(f)
		if err != nil {
			return err
		}
		return c.t.Send(raw)
	}
	var (
		accepted bool
		next     uint16
		crc      uint32
		size     uint32
		done     *sp.Done
		missing  []byte
		nacks    int
	)
	ack := func() error { return c.sendMsg(seq, &sp.Ack{Next: next, Window: c.cfg.Window}) }
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
		default: // streaming: repeat our ACK in case it was lost
			return ack()
		}
		return nil
	}
	err = c.exchange(ctx, seq, resend, func(f sp.Frame, msg sp.Message) (bool, error) {
		switch msg := msg.(type) {
		case *sp.Ack:
			accepted = true
		case *sp.Nack:
			if nacks++; nacks > c.cfg.Retries {
				return true, fmt.Errorf("%w: the daemon keeps asking for the prompt again (%d NACKs)", ErrTimeout, nacks)
			}
			switch msg.Reason {
			case sp.NackMissing:
				missing = append([]byte(nil), msg.Missing...)
				return false, resend(1)
			case sp.NackBadChecksum, sp.NackBadFrame:
				return false, resend(0)
			}
		case *sp.Token:
			accepted = true
			if msg.Chunk != next { // duplicate or a gap: go-back-N
				return false, ack()
			}
			next++
			size += uint32(len(msg.Text))
			crc = sp.UpdateCRC32C(crc, msg.Text)
			if err := onText(msg.Text); err != nil {
				return true, err
			}
			return false, ack()
		case *sp.Done:
			if msg.Chunk != next {
				return false, ack()
			}
			next++
			done = msg
			c.finish(seq, next)
			return true, ack()
		case *sp.Error:
			if msg.Stream() {
				if msg.Chunk != next {
					return false, ack()
				}
				next++
				c.finish(seq, next)
				_ = ack()
				return true, msg
			}
			if accepted && msg.Code != sp.CodeNoSession {
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
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if done.TextBytes != size || done.TextCRC32C != crc {
		return done, fmt.Errorf("%w: DONE says %d bytes crc %08x, received %d bytes crc %08x", ErrChecksum, done.TextBytes, done.TextCRC32C, size, crc)
	}
	return done, nil
}

// cancel tells the daemon to stop request seq and waits a little for the
// stream's final chunk. It keeps acknowledging the TOKENs still arriving
// (next is the chunk expected), or a closed window would hold the final
// chunk back, and acknowledges the final chunk so the daemon can let go.
func (c *Client) cancel(seq uint8, next uint16) {
	ctx, stop := context.WithTimeout(context.Background(), 8*c.cfg.RTO)
	defer stop()
	_ = c.exchange(ctx, seq, func(int) error { return c.sendMsg(seq, &sp.Cancel{}) }, func(f sp.Frame, m sp.Message) (bool, error) {
		switch m := m.(type) {
		case *sp.Token:
			if m.Chunk == next {
				next++
			}
			return false, c.sendMsg(seq, &sp.Ack{Next: next, Window: c.cfg.Window})
		case *sp.Done:
			return true, c.sendMsg(seq, &sp.Ack{Next: m.Chunk + 1, Window: c.cfg.Window})
		case *sp.Error:
			if m.Stream() {
				return true, c.sendMsg(seq, &sp.Ack{Next: m.Chunk + 1, Window: c.cfg.Window})
			}
			return true, nil
		}
		return false, nil
	}, nil)
}

func (c *Client) finish(seq uint8, next uint16) {
	c.finished[c.nfin%len(c.finished)] = finishedStream{valid: true, seq: seq, next: next}
	c.nfin++
}

// reackFinished answers a chunk of the last finished stream with that
// stream's final ACK again (§8.2: a duplicate chunk is acknowledged again).
// Without it a daemon whose final ACK was lost retransmits the final chunk
// until it gives up, holding one of the device's request places meanwhile.
func (c *Client) reackFinished(f sp.Frame) {
	var fin *finishedStream
	for i := range c.finished { // the newest with this seq
		e := &c.finished[(c.nfin-1-i+2*len(c.finished))%len(c.finished)]
		if e.valid && e.seq == f.Seq {
			fin = e
			break
		}
	}
	if fin == nil {
		return
	}
	switch f.Cmd {
	case sp.CmdToken, sp.CmdDone, sp.CmdError:
	default:
		return
	}
	if c.verifier != nil {
		if _, _, _, err := c.verifier.Verify(f); err != nil {
			return
		}
	}
	_ = c.sendMsg(f.Seq, &sp.Ack{Next: fin.next, Window: c.cfg.Window})
}

// Bye closes the session.
func (c *Client) Bye(ctx context.Context) error {
	c.seq++
	return c.exchange(ctx, c.seq, func(int) error { return c.sendMsg(c.seq, &sp.Bye{}) },
		func(f sp.Frame, _ sp.Message) (bool, error) { return f.Cmd == sp.CmdBye, nil }, nil)
}
