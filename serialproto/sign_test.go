package serialproto

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func mustSigner(t testing.TB, key Key, dir Direction, nonce SessionNonce, link uint8, last uint64) *Signer {
	t.Helper()
	s, err := NewSigner(key, dir, nonce, link, last)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustVerifier(t testing.TB, key Key, dir Direction, nonce SessionNonce) *Verifier {
	t.Helper()
	v, err := NewVerifier(key, dir, nonce)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestZeroKeyRefused(t *testing.T) {
	if _, err := NewSigner(Key{}, DeviceToDaemon, SessionNonce{}, 0, 0); !errors.Is(err, ErrNoKey) {
		t.Fatalf("signer with no key: %v", err)
	}
	if _, err := NewVerifier(Key{}, DeviceToDaemon, SessionNonce{}); !errors.Is(err, ErrNoKey) {
		t.Fatalf("verifier with no key: %v", err)
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	key := vectorKey(t)
	nonce := MakeNonce(1, 2)
	s := mustSigner(t, key, DeviceToDaemon, nonce, 3, 0)
	v := mustVerifier(t, key, DeviceToDaemon, nonce)
	for i, data := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte{7}, MaxData-SignatureLen)} {
		raw, err := s.AppendSigned(nil, Frame{Version: 1, Cmd: CmdInfer, Seq: uint8(i), Data: data})
		if err != nil {
			t.Fatal(err)
		}
		f, err := Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		got, link, counter, err := v.Verify(f)
		if err != nil || link != 3 || counter != uint64(i+1) || !bytes.Equal(got.Data, data) {
			t.Fatalf("frame %d: %v link %d counter %d", i, err, link, counter)
		}
	}
	if _, err := s.AppendSigned(nil, Frame{Version: 1, Cmd: CmdInfer, Data: make([]byte, MaxData-SignatureLen+1)}); !errors.Is(err, ErrDataTooLarge) {
		t.Fatalf("oversize: %v", err)
	}
}

// TestVerifyRejectsEveryTamperedByte flips each byte of a signed frame (and
// fixes the CRC so only the tag can notice).
func TestVerifyRejectsEveryTamperedByte(t *testing.T) {
	key := vectorKey(t)
	nonce := MakeNonce(1, 2)
	raw, _ := mustSigner(t, key, DeviceToDaemon, nonce, 0, 0).AppendSigned(nil, Frame{Version: 1, Cmd: CmdPing, Seq: 1, Data: []byte("abc")})
	for i := 1; i < len(raw)-1; i++ {
		bad := bytes.Clone(raw)
		bad[i] ^= 0x01
		bad[len(bad)-1] = CRC8(bad[1 : len(bad)-1])
		f, err := Decode(bad)
		if err != nil {
			continue // a changed length byte no longer frames
		}
		if _, _, _, err := mustVerifier(t, key, DeviceToDaemon, nonce).Verify(f); err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}
}

func TestVerifyBindsDirectionNonceAndKey(t *testing.T) {
	key := vectorKey(t)
	other, _ := NewKey(bytes.Repeat([]byte{9}, 32))
	nonce := MakeNonce(1, 2)
	raw, _ := mustSigner(t, key, DeviceToDaemon, nonce, 0, 0).AppendSigned(nil, Frame{Version: 1, Cmd: CmdPing, Seq: 1})
	f, _ := Decode(raw)
	for name, v := range map[string]*Verifier{
		"reflected":     mustVerifier(t, key, DaemonToDevice, nonce),
		"other session": mustVerifier(t, key, DeviceToDaemon, MakeNonce(1, 3)),
		"other key":     mustVerifier(t, other, DeviceToDaemon, nonce),
	} {
		if _, _, _, err := v.Verify(f); !errors.Is(err, ErrBadTag) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestReplayWindow(t *testing.T) {
	var w ReplayWindow
	steps := []struct {
		counter uint64
		want    error
	}{
		{100, nil}, {100, ErrReplay}, {99, nil}, {105, nil}, {101, nil}, {99, ErrReplay},
		{42, nil}, // 105−42 = 63: still inside the window
		{41, ErrStale}, {200, nil}, {137, nil}, {136, ErrStale}, {200, ErrReplay},
		{1000, nil}, {999, nil}, {200, ErrStale},
	}
	for i, s := range steps {
		if err := w.Accept(s.counter); !errors.Is(err, s.want) || (s.want == nil && err != nil) {
			t.Fatalf("step %d counter %d: %v, want %v", i, s.counter, err, s.want)
		}
	}
}

func TestVerifierWindowsPerLink(t *testing.T) {
	key := vectorKey(t)
	nonce := MakeNonce(1, 2)
	v := mustVerifier(t, key, DeviceToDaemon, nonce)
	uart := mustSigner(t, key, DeviceToDaemon, nonce, 0, 500)
	wifi := mustSigner(t, key, DeviceToDaemon, nonce, 1, 0)
	for _, s := range []*Signer{uart, wifi, uart, wifi} {
		raw, _ := s.AppendSigned(nil, Frame{Version: 1, Cmd: CmdPing})
		f, _ := Decode(raw)
		if _, _, _, err := v.Verify(f); err != nil {
			t.Fatalf("link %d: %v (one link's counters must not age another's)", s.LinkID, err)
		}
	}
	// A forged frame must not move the window: bad tag, then the real one.
	raw, _ := wifi.AppendSigned(nil, Frame{Version: 1, Cmd: CmdPing})
	forged := bytes.Clone(raw)
	forged[len(forged)-3] ^= 1
	forged[len(forged)-1] = CRC8(forged[1 : len(forged)-1])
	ff, err := Decode(forged)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := v.Verify(ff); !errors.Is(err, ErrBadTag) {
		t.Fatal(err)
	}
	f, _ := Decode(raw)
	if _, _, _, err := v.Verify(f); err != nil {
		t.Fatalf("the genuine frame after a forgery: %v", err)
	}
}

func TestKeyNeverPrinted(t *testing.T) {
	secret := []byte("super-secret-key-0123456789abcdef")
	key, err := NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	logger.Info("device", "key", key)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("device", "key", key)
	out := fmt.Sprintf("%v %+v %#v %s %x %q %v", key, key, key, key, key, key, struct{ K Key }{key})
	for _, s := range []string{out, logs.String()} {
		if strings.Contains(s, "secret") || strings.Contains(s, fmt.Sprintf("%x", secret[:8])) {
			t.Fatalf("key leaked: %s", s)
		}
	}
	if _, err := NewKey(make([]byte, 8)); !errors.Is(err, ErrKeyLength) {
		t.Fatalf("short key: %v", err)
	}
}

func TestSignerCounterExhausted(t *testing.T) {
	s := mustSigner(t, vectorKey(t), DeviceToDaemon, SessionNonce{}, 0, maxCounter)
	if _, err := s.AppendSigned(nil, Frame{Version: 1, Cmd: CmdPing}); !errors.Is(err, ErrCounter) {
		t.Fatalf("want ErrCounter, got %v", err)
	}
}
