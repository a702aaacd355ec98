package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// eventLog is an Observer that writes every event down as a line.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (r *eventLog) add(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *eventLog) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *eventLog) count(prefix string) int {
	n := 0
	for _, e := range r.list() {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

func (r *eventLog) RequestStarted(ctx context.Context, info RequestInfo) (context.Context, RequestObserver) {
	r.add("request %s %s", info.Link[:3], info.Device)
	return ctx, &requestLog{r: r}
}

type requestLog struct {
	r      *eventLog
	tokens int
}

func (q *requestLog) Generating(backend string) { q.r.add("generating %s", backend) }
func (q *requestLog) Token(n int)               { q.tokens++ }
func (q *requestLog) Generated(res backends.Result, err error, code serialproto.ErrorCode) {
	q.r.add("generated %d tokens, %d pieces, %s", res.Tokens, q.tokens, Outcome(err, code))
}
func (q *requestLog) Delivered(err error) { q.r.add("delivered %v", err) }

func TestObserverSeesARequest(t *testing.T) {
	rec := &eventLog{}
	e := &testEngine{}
	d, err := New(Config{}, e, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	d.SetObserver(Observers(nil, rec))
	addr, stop := runDaemon(t, d)
	defer stop()

	c := dial(t, addr, device.Config{DeviceID: "watched", MaxData: 32})
	prompt := strings.Repeat("many words here ", 10)
	if _, _, err := ask(t, c, prompt); err != nil {
		t.Fatal(err)
	}
	words := len(strings.SplitAfter(answerFor(prompt), " "))
	waitFor(t, func() bool { return rec.count("delivered") == 1 })
	want := []string{
		"request udp watched",
		"generating test-engine",
		fmt.Sprintf("generated %d tokens, %d pieces, done", words, words),
		"delivered <nil>",
	}
	if got := rec.list(); !slices.Equal(got, want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
}

// TestStatsCountEachFrameOnce: every frame received and sent, TOKENs
// included, is counted once, under its link and command; the per-link
// series add up to the totals /status shows.
func TestStatsCountEachFrameOnce(t *testing.T) {
	e := &testEngine{}
	d, addr := startDaemon(t, Config{}, e)
	c := dial(t, addr, device.Config{DeviceID: "counted", MaxData: 32})
	prompt := strings.Repeat("many words here ", 10)
	if _, _, err := ask(t, c, prompt); err != nil {
		t.Fatal(err)
	}
	frames := func(dir FrameDirection, cmd serialproto.Command) (n, all int64) {
		for _, l := range d.Stats().Links() {
			for _, f := range l.Frames {
				if f.Direction == dir {
					all += f.N
					if f.Command == cmd {
						n += f.N
					}
				}
			}
		}
		return n, all
	}
	waitFor(t, func() bool { // the DONE is counted once sent; the device's last ACK may be on its way
		dones, out := frames(FrameOut, serialproto.CmdDone)
		_, in := frames(FrameIn, 0)
		return dones == 1 && in == d.Stats().FramesIn.Load() && out == d.Stats().FramesOut.Load()
	})
	if n, _ := frames(FrameOut, serialproto.CmdToken); n < 2 {
		t.Fatalf("%d TOKEN frames counted; the answer needs several at max_data 32", n)
	}
	if infers, _ := frames(FrameIn, serialproto.CmdInfer); infers == 0 {
		t.Fatal("no INFER frame counted")
	}
	links := d.Stats().Links()
	if len(links) != 1 || !strings.HasPrefix(links[0].Link, "udp:") || links[0].Sessions != 1 ||
		!slices.Equal(links[0].Requests, []RequestCount{{"done", "none", 1}}) {
		t.Fatalf("per link: %+v", links)
	}
	if got := d.Stats().Tokens()["test-engine"]; got != int64(len(strings.SplitAfter(answerFor(prompt), " "))) {
		t.Fatalf("tokens by engine: %v", d.Stats().Tokens())
	}
}

func TestLocalRequestsShareTheDevicesLimits(t *testing.T) {
	e := &testEngine{release: make(chan struct{})}
	rec := &eventLog{}
	d, err := New(Config{MaxConcurrent: 1, MaxQueue: -1, MaxPerSession: 1}, e, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	d.SetObserver(rec)
	ctx := context.Background()
	if _, err := d.Generate(ctx, LocalRequest{Client: "app", Prompt: "early"}, nil); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("before Run: %v", err)
	}
	addr, stop := runDaemon(t, d)
	defer stop()
	waitFor(t, func() bool { return d.Snapshot(ctx).State == "ready" })

	// A local request holds the only engine slot…
	var text strings.Builder
	result := make(chan error, 1)
	go func() {
		_, err := d.Generate(ctx, LocalRequest{Client: "app", Prompt: "hold it"}, func(p []byte) error { text.Write(p); return nil })
		result <- err
	}()
	waitFor(t, func() bool { return e.calls.Load() == 1 })

	// …so the same client is over its cap, another client finds the queue
	// full, and so does a device: the same BUSY for all.
	var rerr *RequestError
	if _, err := d.Generate(ctx, LocalRequest{Client: "app", Prompt: "again"}, nil); !errors.Is(err, ErrClientBusy) || !errors.As(err, &rerr) || rerr.Code != serialproto.CodeBusy {
		t.Fatalf("same client: %v", err)
	}
	if _, err := d.Generate(ctx, LocalRequest{Client: "other", Prompt: "me"}, nil); !errors.Is(err, ErrQueueFull) || !errors.As(err, &rerr) || rerr.Code != serialproto.CodeBusy {
		t.Fatalf("other client: %v", err)
	}
	dev := dial(t, addr, device.Config{DeviceID: "sensor"})
	var perr *serialproto.Error
	if _, _, err := ask(t, dev, "and me"); !errors.As(err, &perr) || perr.Code != serialproto.CodeBusy {
		t.Fatalf("device: %v", err)
	}
	snap := d.Snapshot(ctx)
	if snap.Running != 1 || snap.LocalRequests != 1 || len(snap.Sessions) != 1 || snap.Sessions[0].Device != "sensor" {
		t.Fatalf("snapshot while busy: %+v", snap)
	}
	close(e.release)
	if err := <-result; err != nil || text.String() != answerFor("hold it") {
		t.Fatalf("local request: %v, %q", err, text.String())
	}
	if got := d.Stats().Busy.Load(); got != 3 {
		t.Fatalf("busy %d, want 3", got)
	}
	counted := false
	for _, l := range d.Stats().Links() {
		counted = counted || l.Link == LocalLink && slices.Contains(l.Requests, RequestCount{"refused", "BUSY", 2})
	}
	if !counted {
		t.Fatalf("local refusals not counted: %+v", d.Stats().Links())
	}
	// The slot is free again: the device is served.
	if _, _, err := ask(t, dev, "now"); err != nil {
		t.Fatal(err)
	}
}

func TestLocalRequestCancelledByCaller(t *testing.T) {
	e := &testEngine{delay: 20 * time.Millisecond}
	d, _ := startDaemon(t, Config{}, e)
	waitFor(t, func() bool { return d.Snapshot(context.Background()).State == "ready" })
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := d.Generate(ctx, LocalRequest{Client: "app", Prompt: strings.Repeat("w ", 50)}, func([]byte) error {
		if n++; n == 2 {
			cancel()
		}
		return nil
	})
	var rerr *RequestError
	if !errors.As(err, &rerr) || rerr.Code != serialproto.CodeCancelled {
		t.Fatalf("want CANCELLED, got %v", err)
	}
	if d.Stats().Canceled.Load() != 1 || d.Snapshot(context.Background()).LocalRequests != 0 {
		t.Fatalf("canceled %d", d.Stats().Canceled.Load())
	}
}

// TestBackToBackRequestsKeepTheirPlace: a device that sends its next INFER
// the moment it has acknowledged DONE must not find its previous request
// still holding its place (MaxPerSession 1): the place is freed when the
// final chunk is acknowledged, in the same goroutine that reads the next
// INFER — not later, by the request's own goroutine.
func TestBackToBackRequestsKeepTheirPlace(t *testing.T) {
	_, addr := startDaemon(t, Config{MaxPerSession: 1, PeerRate: -1}, &testEngine{})
	c := dial(t, addr, device.Config{DeviceID: "eager"})
	for i := range 200 {
		if _, _, err := ask(t, c, "again"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
}
