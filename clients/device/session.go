package device

import (
	"context"
	"errors"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Hello opens the session.
func (c *Client) Hello(ctx context.Context) error {
	c.seq++
	c.nonce++
	hello := &serialproto.Hello{MinVersion: 1, MaxVersion: 1, MaxData: c.cfg.MaxData, Window: c.cfg.Window, BootNonce: c.nonce, DeviceID: c.cfg.DeviceID}
	c.signer, c.verifier = nil, nil
	if !c.cfg.NoSACK {
		hello.Features |= serialproto.FeatureSACK
	}
	if !c.cfg.NoStatusExt {
		hello.Features |= serialproto.FeatureStatusExt
	}
	if c.cfg.Resume {
		hello.Features |= serialproto.FeatureResume
	}
	if c.signing() {
		hello.Features |= serialproto.FeatureSign
		// The HELLO is signed with boot_nonce ‖ 0 (§9.1).
		s, err := serialproto.NewSigner(c.cfg.Key, serialproto.DeviceToDaemon, serialproto.MakeNonce(c.nonce, 0), c.cfg.LinkID, 0)
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
	return c.exchange(ctx, c.seq, func(int) error { return c.t.Send(frame) }, func(f serialproto.Frame, m serialproto.Message) (bool, error) {
		switch m := m.(type) {
		case *serialproto.Welcome:
			if c.signing() {
				if err := c.startSigning(f, m); err != nil {
					return false, nil // not our daemon's WELCOME: keep waiting
				}
			}
			c.welcome = *m
			c.turns = 0 // a new session has no history, unless it resumed one
			if c.Resumed() {
				c.turns = 1
			}
			return true, nil
		case *serialproto.Error:
			return true, m
		}
		return false, nil
	}, nil)
}

// startSigning checks the signed WELCOME w (frame f, its signature block
// still in the frame it came in) and sets up the session's signer and
// verifier from the nonce it carries.
func (c *Client) startSigning(f serialproto.Frame, w *serialproto.Welcome) error {
	if f.Flags&serialproto.FlagSigned == 0 || w.Features&serialproto.FeatureSign == 0 {
		return errors.New("device: the daemon did not grant signing")
	}
	nonce := serialproto.MakeNonce(c.nonce, w.DaemonNonce)
	v, err := serialproto.NewVerifier(c.cfg.Key, serialproto.DaemonToDevice, nonce)
	if err != nil {
		return err
	}
	whole := f
	whole.Data = f.Data[:len(f.Data)+serialproto.SignatureLen] // the block exchange set aside
	if _, _, _, err := v.Verify(whole); err != nil {
		return err
	}
	s, err := serialproto.NewSigner(c.cfg.Key, serialproto.DeviceToDaemon, nonce, c.cfg.LinkID, 0)
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
	err := c.exchange(ctx, c.seq, func(int) error { return c.sendMsg(c.seq, &serialproto.Ping{Data: []byte("mcpd")}) },
		func(f serialproto.Frame, m serialproto.Message) (bool, error) {
			if e, ok := m.(*serialproto.Error); ok {
				return true, e
			}
			return f.Cmd == serialproto.CmdPong, nil
		}, nil)
	return time.Since(start), err
}

// Status asks for the daemon's state; from a daemon that granted
// FeatureStatusExt the reply is Extended, with its cache figures.
func (c *Client) Status(ctx context.Context) (*serialproto.StatusReply, error) {
	c.seq++
	var reply *serialproto.StatusReply
	err := c.exchange(ctx, c.seq, func(int) error { return c.sendMsg(c.seq, &serialproto.Status{}) },
		func(f serialproto.Frame, m serialproto.Message) (bool, error) {
			switch m := m.(type) {
			case *serialproto.StatusReply:
				reply = m
				return true, nil
			case *serialproto.Error:
				return true, m
			}
			return false, nil
		}, nil)
	return reply, err
}

// Bye closes the session.
func (c *Client) Bye(ctx context.Context) error {
	c.seq++
	return c.exchange(ctx, c.seq, func(int) error { return c.sendMsg(c.seq, &serialproto.Bye{}) },
		func(f serialproto.Frame, _ serialproto.Message) (bool, error) {
			return f.Cmd == serialproto.CmdBye, nil
		}, nil)
}
