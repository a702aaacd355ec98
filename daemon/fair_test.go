package daemon

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestFairSlotsRoundRobin: with one slot, a holder that queued many
// requests first and a holder that came later are served in turn, not in
// arrival order; a cancelled waiter is skipped and keeps nothing.
func TestFairSlotsRoundRobin(t *testing.T) {
	f := newFairSlots(1)
	ctx := context.Background()
	first, err := f.acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 16)
	wait := func(key string, ctx context.Context) {
		go func() {
			give, err := f.acquire(ctx, key)
			if err != nil {
				order <- key + "-cancelled"
				return
			}
			order <- key
			give()
		}()
	}
	// a queues three, then b two, then c one whose context ends.
	for _, key := range []string{"a", "a", "a", "b", "b"} {
		wait(key, ctx)
		waitFor(t, func() bool { return f.waitersOf(key) > 0 })
	}
	waitFor(t, func() bool { _, w := f.load(); return w == 5 })
	cctx, cancel := context.WithCancel(ctx)
	wait("c", cctx)
	waitFor(t, func() bool { _, w := f.load(); return w == 6 })
	cancel()
	if got := <-order; got != "c-cancelled" {
		t.Fatalf("first out: %s", got)
	}
	first()
	var got []string
	for range 5 {
		got = append(got, <-order)
	}
	if want := []string{"a", "b", "a", "b", "a"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("served %v, want %v (round-robin by holder)", got, want)
	}
	if r, w := f.load(); r != 0 || w != 0 {
		t.Fatalf("left: %d running, %d waiting", r, w)
	}
}

// TestFairSlotsShare: a holder at its fair share is passed over while
// another waits; alone, it uses every slot.
func TestFairSlotsShare(t *testing.T) {
	f := newFairSlots(2)
	ctx := context.Background()
	a1, _ := f.acquire(ctx, "a")
	a2, _ := f.acquire(ctx, "a") // alone: both slots
	got := make(chan string, 4)
	for _, key := range []string{"a", "b"} {
		go func() {
			give, err := f.acquire(ctx, key)
			if err == nil {
				got <- key
				defer give()
				time.Sleep(20 * time.Millisecond)
			}
		}()
		waitFor(t, func() bool { return f.waitersOf(key) == 1 })
	}
	a1() // a holds one, its share of two among two holders: b goes first
	if first := <-got; first != "b" {
		t.Fatalf("the freed slot went to %s, want b", first)
	}
	a2()
	if second := <-got; second != "a" {
		t.Fatalf("then %s", second)
	}
}

// TestMaxTokensCapped: an INFER's MAX_TOKENS above the daemon's cap runs
// with the cap.
func TestMaxTokensCapped(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{MaxTokens: 40}, e)
	c := dial(t, addr, device.Config{DeviceID: "greedy"})
	if _, _, err := ask(t, c, "long", func(m *serialproto.Infer) {
		m.Set, m.MaxTokens = m.Set.With(serialproto.OptMaxTokens), 65535
	}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if got := e.seen[0].Options.MaxTokens; got != 40 {
		t.Fatalf("engine asked for %d tokens, want the cap 40", got)
	}
}

// TestLocalShareLeavesRoomForDevices: local applications hold at most
// their share of the queue; a device is admitted beyond it.
func TestLocalShareLeavesRoomForDevices(t *testing.T) {
	a, _, _ := newTestAdmission(Config{MaxConcurrent: 2, MaxQueue: 2, LocalShare: 50})
	var l localRequests
	for i := range 2 {
		if _, err := a.admitAs(l.client(fmt.Sprint("app", i)), claim{local: true}, 0); err != nil {
			t.Fatalf("local %d: %v", i, err)
		}
	}
	if _, err := a.admitAs(l.client("app9"), claim{local: true}, 0); !errors.Is(err, errLocalFull) {
		t.Fatalf("a local request beyond the share: %v", err)
	}
	var dev places
	for i := range 2 {
		if _, err := a.admitAs(&dev, claim{device: "d", source: "10.0.0.1"}, 1); err != nil {
			t.Fatalf("device request %d with locals at their share: %v", i, err)
		}
	}
	if a.local.Load() != 2 || a.queued.Load() != 4 {
		t.Fatalf("local %d, queued %d", a.local.Load(), a.queued.Load())
	}
}

// TestPerSourceRequestCap: one source's requests are bounded across its
// sessions and device ids; another source still gets in.
func TestPerSourceRequestCap(t *testing.T) {
	a, _, _ := newTestAdmission(Config{MaxConcurrent: 2, MaxQueue: 16, MaxPerSource: 3})
	var tickets []*ticket
	for i := range 3 {
		var p places
		tk, err := a.admitAs(&p, claim{device: fmt.Sprint("id", i), source: "10.0.0.1"}, 1)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	var p places
	if _, err := a.admitAs(&p, claim{device: "id9", source: "10.0.0.1"}, 1); !errors.Is(err, errSourceFull) || refusal(err).Code != serialproto.CodeBusy {
		t.Fatalf("fourth from one source: %v", err)
	}
	if _, err := a.admitAs(&p, claim{device: "id9", source: "10.0.0.2"}, 1); err != nil {
		t.Fatalf("another source: %v", err)
	}
	tickets[0].release()
	if _, err := a.admitAs(&places{}, claim{device: "id8", source: "10.0.0.1"}, 1); err != nil {
		t.Fatalf("after one is given back: %v", err)
	}
}

// TestSessionsPerSource: a HELLO flood from many ports of one address
// holds at most MaxSessionsPerSource sessions, churning through its own;
// a device from another address opens a session and is answered.
func TestSessionsPerSource(t *testing.T) {
	d, addr := startDaemon(t, Config{MaxSessions: 12, MaxSessionsPerSource: 4}, &testEngine{})
	for i := range 20 {
		tr, err := device.DialUDP(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = device.New(tr, device.Config{DeviceID: fmt.Sprint("flood-", i)}).Hello(ctx)
		cancel()
		if err != nil {
			t.Fatalf("flood HELLO %d: %v", i, err)
		}
	}
	snap := d.Snapshot(context.Background())
	if len(snap.Sessions) != 4 || d.Stats().Evicted.Load() != 16 {
		t.Fatalf("%d sessions, %d evicted; want 4 and 16", len(snap.Sessions), d.Stats().Evicted.Load())
	}
	c := dialFrom(t, "127.0.0.2:0", addr, device.Config{DeviceID: "neighbour"})
	if text, _, err := ask(t, c, "hello?"); err != nil || text != answerFor("hello?") {
		t.Fatalf("neighbour: %q %v", text, err)
	}
}

// TestContextOptionBounded: an INFER's CONTEXT reaches the engine at most
// MaxContext.
func TestContextOptionBounded(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{MaxContext: 2048}, e)
	c := dial(t, addr, device.Config{DeviceID: "wide"})
	for _, want := range []struct{ ask, got uint32 }{{512, 512}, {1 << 31, 2048}} {
		if _, _, err := ask(t, c, "ctx", func(m *serialproto.Infer) {
			m.Set, m.Context = m.Set.With(serialproto.OptContext), want.ask
		}); err != nil {
			t.Fatal(err)
		}
		e.mu.Lock()
		got := e.seen[len(e.seen)-1].Options.ContextSize
		e.mu.Unlock()
		if got != int(want.got) {
			t.Fatalf("CONTEXT %d reached the engine as %d, want %d", want.ask, got, want.got)
		}
	}
}

// waitersOf counts holder key's queued requests, under the lock the
// waiting goroutines take (reading f.waiting bare raced with them).
func (f *fairSlots) waitersOf(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiting[key])
}
