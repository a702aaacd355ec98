package daemon

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Signing (docs/protocol.md §9): devices listed in the configuration's
// Keys sign every frame, and so does the daemon in their sessions. This
// file checks what comes in — a HELLO's own MAC, then each frame of a
// signed session — and seals what goes out; every rejection is counted by
// its reason (§9.2).

// authHello parses a HELLO and checks it against the device's key: a keyed
// device must sign, an unkeyed one must not, and a signature must verify
// under boot_nonce ‖ 0 (§9.1). It returns the HELLO and the device's key
// (zero when it has none), or the error to answer.
func (d *Daemon) authHello(f serialproto.Frame) (*serialproto.Hello, serialproto.Key, *serialproto.Error) {
	var h serialproto.Hello
	if f.Flags&serialproto.FlagFragment != 0 {
		return nil, serialproto.Key{}, serialproto.NewError(serialproto.CodeMalformed, "HELLO cannot be fragmented")
	}
	signed := f.Flags&serialproto.FlagSigned != 0
	body := f.Data
	if signed {
		if len(body) < serialproto.SignatureLen {
			return nil, serialproto.Key{}, serialproto.NewError(serialproto.CodeMalformed, "signed HELLO without a signature block")
		}
		body = body[:len(body)-serialproto.SignatureLen]
	}
	if err := h.UnmarshalBody(body); err != nil {
		return nil, serialproto.Key{}, serialproto.NewError(serialproto.CodeMalformed, err.Error())
	}
	key, keyed := d.conf().Keys[h.DeviceID]
	switch {
	case keyed && !signed:
		d.countAuth(serialproto.ErrUnsigned)
		return nil, key, serialproto.NewError(serialproto.CodeAuthRequired, "this device must sign")
	case signed && !keyed:
		d.countAuth(serialproto.ErrBadTag)
		return nil, key, serialproto.NewError(serialproto.CodeAuthFailed, "no key for this device")
	case signed:
		// The body is trusted only once its MAC checks out.
		v, err := serialproto.NewVerifier(key, serialproto.DeviceToDaemon, serialproto.MakeNonce(h.BootNonce, 0))
		if err == nil {
			_, _, _, err = v.Verify(f)
		}
		if err == nil && h.Features&serialproto.FeatureSign == 0 {
			err = errors.New("signed HELLO without the SIGN feature")
		}
		if err != nil {
			d.countAuth(err)
			d.remoteLog(slog.LevelInfo, "HELLO rejected", "device", h.DeviceID, "reason", err)
			return nil, key, serialproto.NewError(serialproto.CodeAuthFailed, "HELLO signature rejected")
		}
	}
	return &h, key, nil
}

// open checks a frame's signature in a signed session and strips it; in an
// unsigned session it refuses signed frames. Failures are counted and
// answered with AUTH_FAILED at most once a second — except replayed and
// stale frames: their tag is right, so they are copies of frames already
// taken (UDP duplicates them), and an answer would only make the device
// abandon a request that is fine.
func (s *session) open(f serialproto.Frame) (serialproto.Frame, bool) {
	var err error
	now := s.d.clock.Now()
	s.mu.Lock()
	switch {
	case s.verifier != nil:
		f, _, _, err = s.verifier.Verify(f)
	case f.Flags&serialproto.FlagSigned != 0:
		err = serialproto.ErrBadTag // no key: a signature can't be right
	}
	copied := errors.Is(err, serialproto.ErrReplay) || errors.Is(err, serialproto.ErrStale)
	answer := err != nil && !copied && now.Sub(s.lastAuthErr) >= time.Second
	if answer {
		s.lastAuthErr = now
	}
	s.mu.Unlock()
	if err == nil {
		return f, true
	}
	s.d.countAuth(err)
	s.d.remoteLog(slog.LevelInfo, "frame rejected", "device", s.deviceID, "reason", err)
	if answer {
		s.send(f.Seq, serialproto.NewError(serialproto.CodeAuthFailed, "frame signature rejected"))
	}
	return f, false
}

// countAuth counts a rejected frame by the reason of §9.2.
func (d *Daemon) countAuth(err error) {
	d.stats.AuthFailures.Add(1)
	switch {
	case errors.Is(err, serialproto.ErrUnsigned):
		d.stats.AuthUnsigned.Add(1)
	case errors.Is(err, serialproto.ErrReplay):
		d.stats.AuthReplay.Add(1)
	case errors.Is(err, serialproto.ErrStale):
		d.stats.AuthStale.Add(1)
	default:
		d.stats.AuthBadTag.Add(1)
	}
}

// sealer encodes one session's outgoing frames: plainly, or signed with the
// session's key and nonce (docs/protocol.md §9). A nil sealer is plain.
type sealer struct {
	mu     sync.Mutex // a Signer's counter is not safe for concurrent use
	signer *serialproto.Signer
}

// newSealer signs with key under nonce, or returns nil (plain) for the
// zero key.
func newSealer(key serialproto.Key, nonce serialproto.SessionNonce) (*sealer, error) {
	if key.IsZero() {
		return nil, nil
	}
	signer, err := serialproto.NewSigner(key, serialproto.DaemonToDevice, nonce, 0, 0)
	if err != nil {
		return nil, err
	}
	return &sealer{signer: signer}, nil
}

func (z *sealer) signed() bool { return z != nil && z.signer != nil }

func (z *sealer) seal(f serialproto.Frame) ([]byte, error) {
	if !z.signed() {
		return serialproto.AppendFrame(make([]byte, 0, serialproto.Overhead+len(f.Data)), f)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.signer.AppendSigned(make([]byte, 0, serialproto.Overhead+serialproto.SignatureLen+len(f.Data)), f)
}
