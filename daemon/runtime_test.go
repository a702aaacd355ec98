package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

func ping(c *device.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := c.Ping(ctx)
	return err
}

// TestLinksAddedAndRemovedAtRuntime: a link added to a running daemon
// serves devices; removing it closes only its sessions and frees its
// socket, while a request streaming on another link finishes intact and
// that device's session stays.
func TestLinksAddedAndRemovedAtRuntime(t *testing.T) {
	e := &testEngine{delay: 30 * time.Millisecond}
	d, addrA := startDaemon(t, Config{}, e)
	b, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addrB := b.Addr().String()
	waitFor(t, func() bool { return len(d.Links()) == 1 }) // Run has started
	if err := d.AddLink(b); err != nil {
		t.Fatal(err)
	}
	if err := d.AddLink(b); err == nil {
		t.Fatal("the same link added twice")
	}
	if got := d.Links(); len(got) != 2 {
		t.Fatalf("links %v", got)
	}
	onA := dial(t, addrA, device.Config{DeviceID: "stays"})
	onB := dial(t, addrB, device.Config{DeviceID: "goes"})

	prompt := "one two three four five six seven eight nine ten"
	answer := make(chan error, 1)
	go func() {
		text, _, err := ask(t, onA, prompt)
		if err == nil && text != answerFor(prompt) {
			err = errors.New("answer " + text)
		}
		answer <- err
	}()
	waitFor(t, func() bool { return e.calls.Load() == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.RemoveLink(ctx, b.Name()); err != nil {
		t.Fatal(err)
	}
	if err := <-answer; err != nil {
		t.Fatalf("the request on the staying link: %v", err)
	}
	if err := ping(onA); err != nil {
		t.Fatalf("the session on the staying link: %v", err)
	}
	if got := d.Stats().Sessions.Load(); got != 1 {
		t.Fatalf("%d sessions after removing a link, want 1", got)
	}
	// The socket is released: the address can be bound again, and served
	// again under the same name.
	again, err := ListenUDP(addrB)
	if err != nil {
		t.Fatalf("rebinding the removed link's address: %v", err)
	}
	if err := d.AddLink(again); err != nil {
		t.Fatal(err)
	}
	// The old session on it is gone: the device must say HELLO again.
	if err := ping(onB); errCode(err) != serialproto.CodeNoSession {
		t.Fatalf("ping on the re-added link without HELLO: %v, want NO_SESSION", err)
	}
	if err := d.RemoveLink(ctx, "udp:nowhere"); err == nil {
		t.Fatal("removing an unknown link succeeded")
	}
}

// TestSerialLinkRemovedAtRuntime: a pty UART link added at runtime serves
// its device; removing it closes the port (the device's reads end) and its
// session, and leaves the UDP device alone.
func TestSerialLinkRemovedAtRuntime(t *testing.T) {
	d, addr := startDaemon(t, Config{}, &testEngine{})
	master, tty := openPty(t)
	sc, err := ParseSerial(tty + ":115200")
	if err != nil {
		t.Fatal(err)
	}
	link := NewSerialLink(sc, testLogger())
	waitFor(t, func() bool { return len(d.Links()) == 1 })
	if err := d.AddLink(link); err != nil {
		t.Fatal(err)
	}
	stream := device.NewStream(master)
	t.Cleanup(func() { stream.Close() })
	serialDev := device.New(stream, device.Config{DeviceID: "uart"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for { // the port opens asynchronously
		hctx, hcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := serialDev.Hello(hctx)
		hcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("HELLO over the pty: %v", err)
		}
	}
	udpDev := dial(t, addr, device.Config{DeviceID: "udp"})
	if got := d.Stats().Sessions.Load(); got != 2 {
		t.Fatalf("%d sessions, want 2", got)
	}
	if err := d.RemoveLink(ctx, link.Name()); err != nil {
		t.Fatal(err)
	}
	if got := d.Stats().Sessions.Load(); got != 1 {
		t.Fatalf("%d sessions after removing the UART, want 1", got)
	}
	if err := ping(udpDev); err != nil {
		t.Fatalf("UDP device after the UART went: %v", err)
	}
	if err := ping(serialDev); err == nil {
		t.Fatal("the removed UART still answers")
	}
}

// TestAddLinkNeedsARunningDaemon: before Run and after it, links are
// refused with ErrNotRunning.
func TestAddLinkNeedsARunningDaemon(t *testing.T) {
	d, err := New(Config{}, &testEngine{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.conn.Close()
	if err := d.AddLink(l); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("AddLink before Run: %v", err)
	}
}

// TestReconfigureKeepsSessions: new limits apply to new sessions and
// requests; open sessions stay, except a device whose key changed.
func TestReconfigureKeepsSessions(t *testing.T) {
	key := testKey(t, 7)
	d, addr := startDaemon(t, Config{Keys: map[string]serialproto.Key{"signed": key}}, &testEngine{})
	plain := dial(t, addr, device.Config{DeviceID: "plain"})
	signed := dial(t, addr, device.Config{DeviceID: "signed", Key: key})

	cfg := d.Config()
	cfg.MaxSessions = 2
	cfg.Keys = map[string]serialproto.Key{"signed": testKey(t, 8)} // rotated
	cfg.Heartbeat = 2 * time.Second
	if err := d.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if err := ping(plain); err != nil {
		t.Fatalf("an unconcerned session after a reload: %v", err)
	}
	if err := ping(signed); err == nil {
		t.Fatal("a device with a rotated key kept its session")
	}
	if got := d.Stats().Sessions.Load(); got != 1 {
		t.Fatalf("%d sessions, want 1", got)
	}
	if text, _, err := ask(t, plain, "still here"); err != nil || text != answerFor("still here") {
		t.Fatalf("ask after reload: %q %v", text, err)
	}
	// The new heartbeat is announced to new sessions.
	fresh := dial(t, addr, device.Config{DeviceID: "fresh"})
	if hb := fresh.Welcome().HeartbeatMS; hb != 2000 {
		t.Fatalf("WELCOME heartbeat %d ms, want 2000", hb)
	}
	// MaxSessions 2 is now reached by two devices in use (a half-open or
	// silent session would be evicted instead): a third is refused.
	if _, _, err := ask(t, fresh, "in use"); err != nil {
		t.Fatal(err)
	}
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := device.New(tr, device.Config{DeviceID: "third"}).Hello(ctx); errCode(err) != serialproto.CodeBusy {
		t.Fatalf("HELLO beyond the new MaxSessions: %v, want BUSY", err)
	}
	bad := cfg
	bad.Heartbeat = time.Hour
	if err := d.Reconfigure(bad); err == nil || d.Config().Heartbeat != 2*time.Second {
		t.Fatalf("an invalid configuration was taken: %v, heartbeat %v", err, d.Config().Heartbeat)
	}
}

// TestSwapBackendLetsRunningRequestsFinish: a request running on the old
// engine finishes there; new requests go to the new one; the old engine is
// reported idle only after its last request.
func TestSwapBackendLetsRunningRequestsFinish(t *testing.T) {
	old := &testEngine{release: make(chan struct{})}
	d, err := New(Config{}, old, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	addr, stop := runDaemon(t, d)
	defer stop()
	first := dial(t, addr, device.Config{DeviceID: "first"})
	second := dial(t, addr, device.Config{DeviceID: "second"})

	answer := make(chan string, 1)
	go func() { text, _, _ := ask(t, first, "on the old engine"); answer <- text }()
	waitFor(t, func() bool { return old.calls.Load() == 1 })

	fresh := &testEngine{}
	prev, idle, err := d.SwapBackend(fresh)
	if err != nil || prev != backends.Backend(old) {
		t.Fatalf("SwapBackend: %v, %v", prev, err)
	}
	if text, _, err := ask(t, second, "on the new engine"); err != nil || text != answerFor("on the new engine") {
		t.Fatalf("ask after the swap: %q %v", text, err)
	}
	if fresh.calls.Load() != 1 || old.calls.Load() != 1 {
		t.Fatalf("calls: old %d, new %d", old.calls.Load(), fresh.calls.Load())
	}
	select {
	case <-idle:
		t.Fatal("the old engine was reported idle with a request on it")
	case <-time.After(50 * time.Millisecond):
	}
	close(old.release)
	if got := <-answer; got != answerFor("on the old engine") {
		t.Fatalf("the old engine's request got %q", got)
	}
	select {
	case <-idle:
	case <-time.After(5 * time.Second):
		t.Fatal("the old engine never became idle")
	}
	if d.Backend() != backends.Backend(fresh) {
		t.Fatal("Backend is not the new engine")
	}
}

// TestAliveDetectsAHungEngine: an idle daemon and one whose engine streams
// slowly are alive; an engine call without output for StallTimeout is not,
// and it is alive again once the call returns.
func TestAliveDetectsAHungEngine(t *testing.T) {
	e := &testEngine{release: make(chan struct{})}
	d, addr, clk := startDaemonOnClock(t, Config{StallTimeout: 300 * time.Millisecond}, e)
	if err := d.Alive(clk.Now()); err != nil {
		t.Fatalf("idle daemon: %v", err)
	}
	c := dial(t, addr, device.Config{DeviceID: "hang"})
	answer := make(chan error, 1)
	go func() { _, _, err := ask(t, c, "a b c"); answer <- err }()
	waitFor(t, func() bool { return e.calls.Load() == 1 })
	if err := d.Alive(clk.Now()); err != nil {
		t.Fatalf("an engine call just started: %v", err)
	}
	clk.Advance(300 * time.Millisecond)
	if err := d.Alive(clk.Now()); err != nil {
		t.Fatalf("silent for exactly StallTimeout: %v", err)
	}
	clk.Advance(time.Millisecond)
	err := d.Alive(clk.Now())
	if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "engine") {
		t.Fatalf("Alive: %v", err)
	}
	close(e.release)
	if err := <-answer; err != nil {
		t.Fatal(err)
	}
	if err := d.Alive(clk.Now()); err != nil {
		t.Fatalf("after the call returned: %v", err)
	}

	// A slow engine that keeps producing — a token every 200 ms of the
	// clock, against a limit of 300 — is alive throughout.
	slow := &testEngine{pace: make(chan struct{})}
	d2, addr2, clk2 := startDaemonOnClock(t, Config{StallTimeout: 300 * time.Millisecond}, slow)
	c2 := dial(t, addr2, device.Config{DeviceID: "slow"})
	prompt := "one two three four five six seven eight"
	answer2 := make(chan error, 1)
	go func() { _, _, err := ask(t, c2, prompt); answer2 <- err }()
	for range strings.SplitAfter(answerFor(prompt), " ") {
		<-slow.pace // a token is out
		clk2.Advance(200 * time.Millisecond)
		if err := d2.Alive(clk2.Now()); err != nil {
			t.Fatalf("a slow but steady engine: %v", err)
		}
		slow.pace <- struct{}{} // the next token
	}
	if err := <-answer2; err != nil {
		t.Fatal(err)
	}
}

// TestAliveDetectsAStuckDispatchLock: with the lock every frame takes held,
// the janitor stops ticking and Alive says so once janitorStall has passed
// without a tick; it is alive again once the lock is free.
func TestAliveDetectsAStuckDispatchLock(t *testing.T) {
	d, _, clk := startDaemonOnClock(t, Config{Heartbeat: 200 * time.Millisecond}, &testEngine{})
	advanceUntil(t, clk, 50*time.Millisecond, func() bool { return d.live.lastBeat.Load() != 0 })
	d.sessions.mu.Lock()
	clk.Advance(janitorStall + time.Second) // the janitor's ticks wait for the lock
	err := d.Alive(clk.Now())
	d.sessions.mu.Unlock()
	if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "dispatch") {
		t.Fatalf("Alive: %v", err)
	}
	waitFor(t, func() bool { return d.Alive(clk.Now()) == nil })
}
