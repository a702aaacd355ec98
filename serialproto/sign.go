package serialproto

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"log/slog"
)

// Errors of frame authentication (docs/protocol.md §9); test with errors.Is.
var (
	ErrUnsigned  = errors.New("serialproto: frame is not signed")
	ErrBadTag    = errors.New("serialproto: signature tag mismatch")
	ErrReplay    = errors.New("serialproto: replayed signature counter")
	ErrStale     = errors.New("serialproto: signature counter below the replay window")
	ErrKeyLength = errors.New("serialproto: key must be 16..64 bytes")
	ErrCounter   = errors.New("serialproto: signature counter exhausted (48 bits)")
	ErrNoKey     = errors.New("serialproto: no key: signing needs a key of 16..64 bytes")
)

const (
	tagLen      = 8
	maxCounter  = 1<<48 - 1
	replayWidth = 64
	macDomain   = "MCPF"
)

// Direction says which way a signed frame travels; it is part of the MAC
// so a frame cannot be reflected back to its sender.
type Direction uint8

const (
	DeviceToDaemon Direction = 0
	DaemonToDevice Direction = 1
)

// Key is a device's pre-shared signing key. Its String, GoString, Format
// and LogValue never reveal the bytes, so a Key can't leak into a log line.
type Key struct{ b []byte }

// NewKey copies b (16..64 bytes) into a Key.
func NewKey(b []byte) (Key, error) {
	if len(b) < 16 || len(b) > 64 {
		return Key{}, fmt.Errorf("%w: got %d", ErrKeyLength, len(b))
	}
	return Key{b: append([]byte(nil), b...)}, nil
}

// IsZero reports whether k holds no key.
func (k Key) IsZero() bool { return len(k.b) == 0 }

// Equal compares two keys in constant time.
func (k Key) Equal(o Key) bool { return subtle.ConstantTimeCompare(k.b, o.b) == 1 }

// Check is a fingerprint of k for label: the first 16 bytes of
// HMAC-SHA256(k, label). It tells whether a key is the one something was
// kept for (the daemon's saved conversations) without keeping the key.
func (k Key) Check(label string) [16]byte {
	m := hmac.New(sha256.New, k.b)
	m.Write([]byte(label))
	var c [16]byte
	copy(c[:], m.Sum(nil))
	return c
}

func (Key) String() string               { return "[redacted key]" }
func (Key) GoString() string             { return "serialproto.Key{[redacted]}" }
func (Key) LogValue() slog.Value         { return slog.StringValue("[redacted key]") }
func (Key) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte("[redacted key]")) }
func (Key) MarshalText() ([]byte, error) { return []byte("[redacted key]"), nil }

// SessionNonce binds signatures to one session: the HELLO's boot nonce
// followed by the WELCOME's daemon nonce (zero while signing the HELLO).
type SessionNonce [8]byte

// MakeNonce builds the session nonce from its two halves.
func MakeNonce(bootNonce, daemonNonce uint32) SessionNonce {
	var n SessionNonce
	binary.BigEndian.PutUint32(n[:4], bootNonce)
	binary.BigEndian.PutUint32(n[4:], daemonNonce)
	return n
}

// macState computes tags. Its scratch arrays live in the struct because
// slices handed to a hash.Hash interface escape: keeping them here makes
// signing and verifying allocation-free.
type macState struct {
	h   hash.Hash
	pre [4 + 1 + 8 + 5]byte
	sum [sha256.Size]byte
}

func newMACState(key Key) macState { return macState{h: hmac.New(sha256.New, key.b)} }

// tag computes the 8-byte tag of a frame (docs/protocol.md §9.1);
// dataNoTag is its data up to and including the counter, dataLen its
// length field.
func (s *macState) tag(dir Direction, nonce SessionNonce, version, cmdByte, seq uint8, dataLen int, dataNoTag []byte) [tagLen]byte {
	s.h.Reset()
	copy(s.pre[:], macDomain)
	s.pre[4] = byte(dir)
	copy(s.pre[5:], nonce[:])
	s.pre[13] = version
	binary.BigEndian.PutUint16(s.pre[14:], uint16(dataLen))
	s.pre[16] = cmdByte
	s.pre[17] = seq
	s.h.Write(s.pre[:])
	s.h.Write(dataNoTag)
	var tag [tagLen]byte
	copy(tag[:], s.h.Sum(s.sum[:0]))
	return tag
}

// Signer signs the frames one side sends in one session. The counter
// starts at Counter+1 and strictly increases; a Signer is not safe for
// concurrent use.
type Signer struct {
	Dir     Direction
	Nonce   SessionNonce
	LinkID  uint8
	Counter uint64 // the last counter used
	mac     macState
}

// NewSigner returns a Signer for key. A zero Key is refused: an HMAC with
// an empty key is one anybody can compute.
func NewSigner(key Key, dir Direction, nonce SessionNonce, linkID uint8, lastCounter uint64) (*Signer, error) {
	if key.IsZero() {
		return nil, ErrNoKey
	}
	return &Signer{Dir: dir, Nonce: nonce, LinkID: linkID, Counter: lastCounter, mac: newMACState(key)}, nil
}

// AppendSigned appends the wire encoding of f, signed: FlagSigned is set
// and the 15-byte signature block follows f.Data, which must leave room for
// it (≤ 241 bytes).
func (s *Signer) AppendSigned(dst []byte, f Frame) ([]byte, error) {
	if len(f.Data) > MaxData-SignatureLen {
		return dst, fmt.Errorf("%w: %d bytes leave no room for the signature", ErrDataTooLarge, len(f.Data))
	}
	if s.Counter >= maxCounter {
		return dst, ErrCounter
	}
	f.Flags |= FlagSigned
	n := len(f.Data) + SignatureLen
	start := len(dst)
	// Encode header and data first so AppendFrame validates cmd and flags
	// (before a counter is spent); the signature block follows in place.
	dst, err := AppendFrame(dst, Frame{Version: f.Version, Cmd: f.Cmd, Flags: f.Flags, Seq: f.Seq, Data: f.Data})
	if err != nil {
		return dst[:start], err
	}
	s.Counter++
	dst = dst[:len(dst)-1] // drop the provisional crc
	binary.BigEndian.PutUint16(dst[start+2:], uint16(n))
	dst = append(dst, s.LinkID)
	dst = append(dst, byte(s.Counter>>40), byte(s.Counter>>32), byte(s.Counter>>24), byte(s.Counter>>16), byte(s.Counter>>8), byte(s.Counter))
	tag := s.mac.tag(s.Dir, s.Nonce, f.Version, dst[start+4], f.Seq, n, dst[start+HeaderLen:])
	dst = append(dst, tag[:]...)
	return append(dst, CRC8(dst[start+1:])), nil
}

// Verifier checks the signed frames one side receives in one session and
// rejects replays with a 64-counter window per link id (so reordered UDP
// datagrams pass, unlike a single "last counter"). Not safe for concurrent
// use.
type Verifier struct {
	Dir     Direction
	Nonce   SessionNonce
	mac     macState
	windows map[uint8]*ReplayWindow
}

// NewVerifier returns a Verifier for key, for frames travelling dir. A zero
// Key is refused, as by NewSigner.
func NewVerifier(key Key, dir Direction, nonce SessionNonce) (*Verifier, error) {
	if key.IsZero() {
		return nil, ErrNoKey
	}
	return &Verifier{Dir: dir, Nonce: nonce, mac: newMACState(key), windows: make(map[uint8]*ReplayWindow)}, nil
}

// Verify checks f's signature and counter. On success it returns f with the
// signature block removed from Data, and the block's link id and counter.
// The tag is compared in constant time, and before the counter is looked
// at, so a forged frame can't move the replay window.
func (v *Verifier) Verify(f Frame) (Frame, uint8, uint64, error) {
	if f.Flags&FlagSigned == 0 {
		return f, 0, 0, ErrUnsigned
	}
	if len(f.Data) < SignatureLen {
		return f, 0, 0, fmt.Errorf("%w: %d data bytes cannot hold a signature", ErrBadTag, len(f.Data))
	}
	n := len(f.Data)
	block := f.Data[n-SignatureLen:]
	want := v.mac.tag(v.Dir, v.Nonce, f.Version, byte(f.Cmd)|byte(f.Flags), f.Seq, n, f.Data[:n-tagLen])
	if !hmac.Equal(want[:], block[7:]) {
		return f, 0, 0, ErrBadTag
	}
	link := block[0]
	counter := uint64(block[1])<<40 | uint64(block[2])<<32 | uint64(binary.BigEndian.Uint32(block[3:]))
	w := v.windows[link]
	if w == nil {
		w = new(ReplayWindow)
		v.windows[link] = w
	}
	if err := w.Accept(counter); err != nil {
		return f, link, counter, err
	}
	f.Data = f.Data[:n-SignatureLen]
	return f, link, counter, nil
}

// ReplayWindow is the anti-replay state of one (session, link, direction):
// the highest counter accepted and a bitmap of the 64 counters up to it.
type ReplayWindow struct {
	highest uint64
	seen    uint64 // bit i set: counter highest−i was accepted
	started bool
}

// Accept records counter if it is new and returns ErrReplay or ErrStale
// otherwise.
func (w *ReplayWindow) Accept(counter uint64) error {
	switch {
	case !w.started || counter > w.highest:
		shift := counter - w.highest
		if !w.started || shift >= replayWidth {
			w.seen = 0
		} else {
			w.seen <<= shift
		}
		w.highest, w.started = counter, true
		w.seen |= 1
		return nil
	case w.highest-counter >= replayWidth:
		return ErrStale
	}
	bit := uint64(1) << (w.highest - counter)
	if w.seen&bit != 0 {
		return ErrReplay
	}
	w.seen |= bit
	return nil
}
