package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

func testKey(t *testing.T, fill byte) serialproto.Key {
	t.Helper()
	k, err := serialproto.NewKey(bytes.Repeat([]byte{fill}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// capture records every frame a device sends, for replaying.
type capture struct {
	device.Transport
	mu   sync.Mutex
	sent [][]byte
}

func (c *capture) Send(f []byte) error {
	c.mu.Lock()
	c.sent = append(c.sent, append([]byte(nil), f...))
	c.mu.Unlock()
	return c.Transport.Send(f)
}

// TestSignedSession: a device with a key gets its answer over a signed
// session; unsigned, wrongly keyed and replayed frames are refused and
// counted; the key never appears in the logs.
func TestSignedSession(t *testing.T) {
	key := testKey(t, 0x5A)
	var logs syncBuf
	e := &testEngine{}
	d, addr := startDaemonLogging(t, Config{Keys: map[string]serialproto.Key{"locked": key}, DefaultMaxTokens: 1000}, e,
		slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx := context.Background()

	// The right key: an exact answer, frames signed both ways.
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rec := &capture{Transport: tr}
	c := device.New(rec, device.Config{DeviceID: "locked", Key: key, MaxData: 64, Window: 2})
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	if err := c.Hello(actx); err != nil {
		t.Fatal(err)
	}
	if c.Welcome().Features&serialproto.FeatureSign == 0 {
		t.Fatal("WELCOME did not grant signing")
	}
	prompt := strings.Repeat("signed words ", 30)
	var text strings.Builder
	if _, err := c.Ask(actx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error { text.Write(b); return nil }); err != nil {
		t.Fatal(err)
	}
	if text.String() != answerFor(prompt) {
		t.Fatalf("answer %q", text.String())
	}
	for _, raw := range rec.sent {
		if f, err := serialproto.Decode(raw); err != nil || f.Flags&serialproto.FlagSigned == 0 {
			t.Fatalf("the device sent an unsigned frame: %x", raw)
		}
	}

	// Replaying a recorded signed INFER runs nothing and is counted.
	before, calls := d.Stats().AuthFailures.Load(), e.calls.Load()
	for _, raw := range rec.sent {
		if f, _ := serialproto.Decode(raw); f.Cmd == serialproto.CmdInfer {
			_ = tr.Send(raw)
		}
	}
	waitFor(t, func() bool { return d.Stats().AuthFailures.Load() > before })
	if e.calls.Load() != calls {
		t.Fatal("a replayed INFER ran")
	}

	// No key, and the wrong key.
	for _, tc := range []struct {
		name string
		key  serialproto.Key
		want serialproto.ErrorCode
	}{
		{"unsigned", serialproto.Key{}, serialproto.CodeAuthRequired},
		{"wrong key", testKey(t, 0x11), serialproto.CodeAuthFailed},
	} {
		tr2, err := device.DialUDP(addr)
		if err != nil {
			t.Fatal(err)
		}
		c2 := device.New(tr2, device.Config{DeviceID: "locked", Key: tc.key, Retries: 1, RTO: 100 * time.Millisecond})
		err = c2.Hello(actx)
		tr2.Close()
		var perr *serialproto.Error
		if !errors.As(err, &perr) || perr.Code != tc.want {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.want)
		}
	}

	// A signed HELLO from a device with no key is refused too.
	tr3, _ := device.DialUDP(addr)
	defer tr3.Close()
	err = device.New(tr3, device.Config{DeviceID: "stranger", Key: key, Retries: 1}).Hello(actx)
	var perr *serialproto.Error
	if !errors.As(err, &perr) || perr.Code != serialproto.CodeAuthFailed {
		t.Errorf("a stranger's signed HELLO: %v", err)
	}

	if strings.Contains(logs.String(), fmt.Sprintf("%x", bytes.Repeat([]byte{0x5A}, 8))) || strings.Contains(logs.String(), "ZZZZ") {
		t.Fatal("the key appears in the logs")
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSignedHelloRetryAfterBusy: a keyed device refused BUSY for a full
// session table sends the same signed HELLO again (same boot nonce, as the
// C library's retry does) and is welcomed once there is room — the nonce
// is recorded only when a HELLO is admitted. Played back from elsewhere
// after that, the same HELLO is refused as a replay.
func TestSignedHelloRetryAfterBusy(t *testing.T) {
	key := testKey(t, 0x3C)
	_, addr := startDaemon(t, Config{MaxSessions: 1, Keys: map[string]serialproto.Key{"locked": key}}, &testEngine{})
	holder := dial(t, addr, device.Config{DeviceID: "holder"})
	if _, _, err := ask(t, holder, "served"); err != nil { // served: not evictable while fresh
		t.Fatal(err)
	}

	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rec := &capture{Transport: tr}
	c := device.New(rec, device.Config{DeviceID: "locked", Key: key, Retries: 1, RTO: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Hello(ctx); errCode(err) != serialproto.CodeBusy {
		t.Fatalf("HELLO to a full daemon: %v, want BUSY", err)
	}
	helloFrame := rec.sent[0]

	if err := holder.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	answer := func(tr *device.UDP) serialproto.Frame {
		t.Helper()
		if err := tr.Send(helloFrame); err != nil {
			t.Fatal(err)
		}
		f, err := tr.Recv(time.Now().Add(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := answer(tr); f.Cmd != serialproto.CmdWelcome {
		m, _ := serialproto.ParseBody(f.Cmd, f.Data)
		t.Fatalf("the same HELLO after BUSY got %v %v, want WELCOME", f.Cmd, m)
	}
	other, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	f := answer(other)
	m, _ := serialproto.ParseBody(f.Cmd, f.Data)
	if e, ok := m.(*serialproto.Error); !ok || e.Code != serialproto.CodeAuthFailed {
		t.Fatalf("the admitted HELLO played back from another port got %v %v, want AUTH_FAILED", f.Cmd, m)
	}
}
