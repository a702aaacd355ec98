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

func (r *eventLog) Frame(link string, dir FrameDirection, cmd serialproto.Command) {
	r.add("frame %s %s %s", link[:3], dir, cmd)
}
func (r *eventLog) BadFrame(link string, err error) { r.add("bad %v", err) }
func (r *eventLog) Retransmit(link string)          { r.add("retransmit") }
func (r *eventLog) SessionOpened(link string)       { r.add("session+ %s", link[:3]) }
func (r *eventLog) SessionClosed(link string)       { r.add("session- %s", link[:3]) }
func (r *eventLog) Refused(link string, code serialproto.ErrorCode) {
	r.add("refused %s %s", link[:3], code)
}
func (r *eventLog) LinkStats(link string, skipped int64, reconnects int) {
	r.add("linkstats %d %d", skipped, reconnects)
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
	got := rec.list()
	want := []string{
		"session+ udp",
		"request udp watched",
		"generating test-engine",
		fmt.Sprintf("generated %d tokens, %d pieces, done", words, words),
		"delivered <nil>",
	}
	var lifecycle []string
	for _, e := range got {
		if !strings.HasPrefix(e, "frame") {
			lifecycle = append(lifecycle, e)
		}
	}
	if !slices.Equal(lifecycle, want) {
		t.Fatalf("events\n got %q\nwant %q", lifecycle, want)
	}
	// Every frame sent, TOKENs included, is counted once in Stats and once
	// by the observer.
	waitFor(t, func() bool {
		return int64(rec.count("frame udp out")) == d.Stats().FramesOut.Load() &&
			int64(rec.count("frame udp in")) == d.Stats().FramesIn.Load()
	})
	if n := rec.count("frame udp out TOKEN"); n < 2 {
		t.Fatalf("%d TOKEN frames observed; the answer needs several at max_data 32", n)
	}
	if rec.count("frame udp in INFER") == 0 || rec.count("frame udp out DONE") != 1 {
		t.Fatalf("frames: %q", got)
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
	if n := rec.count("refused htt BUSY"); n != 2 {
		t.Fatalf("%d local refusals observed: %q", n, rec.list())
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
