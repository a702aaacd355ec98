package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// startDaemon runs a daemon with engine e on a loopback UDP port.
func startDaemon(t *testing.T, cfg Config, e *testEngine) (*Daemon, string) {
	t.Helper()
	return startDaemonLogging(t, cfg, e, testLogger())
}

// startDaemonLogging is startDaemon with the daemon's logger given; the
// daemon stops (and must stop) when the test ends.
func startDaemonLogging(t *testing.T, cfg Config, e *testEngine, log *slog.Logger) (*Daemon, string) {
	t.Helper()
	d, err := New(cfg, e, log)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)
	return d, addr
}

// startDaemonOnClock is startDaemon on a fake clock: heartbeats, budget
// periods, retransmission timeouts and liveness limits pass only when the
// test advances it.
func startDaemonOnClock(t *testing.T, cfg Config, e *testEngine) (*Daemon, string, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	d, err := newDaemon(cfg, e, testLogger(), clk)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)
	return d, addr, clk
}

// runDaemon runs an already built daemon (tests that set an observer or a
// different engine first build their own) on a loopback UDP port. stop
// cancels it and waits until Run returns, reporting its error; it runs at
// cleanup as well, and only once, so a test may stop the daemon early.
func runDaemon(tb testing.TB, d *Daemon) (addr string, stop func()) {
	tb.Helper()
	l, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return l.Addr().String(), runLinks(tb, d, l)
}

// runLinks runs d on links until the returned stop (also run at cleanup,
// once) cancels it and waits for Run to return, reporting its error.
func runLinks(tb testing.TB, d *Daemon, links ...Link) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, links...) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("daemon: %v", err)
				}
			case <-time.After(15 * time.Second):
				tb.Error("daemon did not stop")
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

// testLogger discards logs unless MCPD_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("MCPD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func dial(t *testing.T, addr string, cfg device.Config) *device.Client {
	t.Helper()
	c, _ := dialVia(t, addr, cfg, nil)
	return c
}

// dialFrom is dial from the local address local (another source host on
// loopback: "127.0.0.2:0").
func dialFrom(t *testing.T, local, addr string, cfg device.Config) *device.Client {
	t.Helper()
	udp, err := device.DialUDPFrom(local, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	c := device.New(udp, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatalf("HELLO: %v", err)
	}
	return c
}

// dialVia is dial with the device's transport wrapped (a recorder, a
// capture) when wrap is not nil; it also returns the bare UDP transport,
// for frames the test sends and reads itself.
func dialVia(t *testing.T, addr string, cfg device.Config, wrap func(device.Transport) device.Transport) (*device.Client, *device.UDP) {
	t.Helper()
	udp, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	var tr device.Transport = udp
	if wrap != nil {
		tr = wrap(udp)
	}
	c := device.New(tr, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatalf("HELLO: %v", err)
	}
	return c, udp
}

func ask(t *testing.T, c *device.Client, prompt string, opts ...func(*serialproto.Infer)) (string, *serialproto.Done, error) {
	t.Helper()
	m := &serialproto.Infer{Prompt: prompt}
	for _, o := range opts {
		o(m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var text strings.Builder
	done, err := c.Ask(ctx, m, func(b []byte) error { text.Write(b); return nil })
	return text.String(), done, err
}

func TestAskOverUDP(t *testing.T) {
	e := &testEngine{}
	d, addr := startDaemon(t, Config{DefaultMaxTokens: 10000}, e)
	for _, tc := range []struct {
		name    string
		maxData uint16
		window  uint8
		prompt  string
	}{
		{"short", 256, 4, "What is the soil moisture?"},
		{"utf8", 32, 1, "Grüße 🌱 — how are the tomatoes? " + strings.Repeat("ä€🌍", 20)},
		{"fragmented 4 KiB prompt", 64, 2, strings.Repeat("a long sensor log line; ", 170)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr, device.Config{DeviceID: "dev-" + strings.ReplaceAll(tc.name, " ", "-"), MaxData: tc.maxData, Window: tc.window})
			text, done, err := ask(t, c, tc.prompt)
			if err != nil {
				t.Fatal(err)
			}
			if text != answerFor(tc.prompt) {
				t.Fatalf("answer %q", text)
			}
			if done.Reason != serialproto.StopEOS || done.Tokens == 0 {
				t.Fatalf("DONE %+v", done)
			}
		})
	}
	if d.Stats().Done.Load() != 3 {
		t.Fatalf("done %d", d.Stats().Done.Load())
	}
}

func TestChatHistory(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{MaxHistory: 4}, e)
	c := dial(t, addr, device.Config{DeviceID: "chat"})
	for _, p := range []string{"one", "two", "three", "four", "five"} {
		if _, _, err := ask(t, c, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := ask(t, c, "fresh", func(m *serialproto.Infer) { m.Set = m.Set.With(serialproto.OptNewChat) }); err != nil {
		t.Fatal(err)
	}
	reqs := e.requests()
	// The third request carries the last two turns (MaxHistory 4 messages).
	third := reqs[2].Messages
	if len(third) != 5 || third[0].Content != "one" || third[1].Content != answerFor("one") || third[4].Content != "three" {
		t.Fatalf("third request history: %+v", third)
	}
	// Over the limit, the history drops to half of it (turn three), so
	// that the fifth request starts as the fourth did (a KV cache keeps it).
	fourth, fifth := reqs[3].Messages, reqs[4].Messages
	if len(fourth) != 3 || fourth[0].Content != "three" || fourth[2].Content != "four" {
		t.Fatalf("fourth request history: %+v", fourth)
	}
	if len(fifth) != 5 || fifth[0].Content != "three" || fifth[2].Content != "four" || fifth[4].Content != "five" {
		t.Fatalf("fifth request history: %+v", fifth)
	}
	if fresh := reqs[5].Messages; len(fresh) != 1 {
		t.Fatalf("NEW_CHAT kept history: %+v", fresh)
	}
}

func TestManyDevicesConcurrently(t *testing.T) {
	e := &testEngine{delay: time.Millisecond}
	d, addr := startDaemon(t, Config{MaxConcurrent: 2, MaxQueue: 64}, e)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dial(t, addr, device.Config{DeviceID: fmt.Sprintf("sensor-%d", i), Window: uint8(1 + i%4), MaxData: uint16(32 + 7*i)})
			prompt := fmt.Sprintf("device %d says hello %s", i, strings.Repeat("x", i*10))
			text, _, err := ask(t, c, prompt)
			if err == nil && text != answerFor(prompt) {
				err = fmt.Errorf("device %d: answer %q", i, text)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := d.Stats().Done.Load(); got != 32 {
		t.Fatalf("%d requests done, want 32", got)
	}
}

func TestBusyIsImmediateAndRetryable(t *testing.T) {
	e := &testEngine{release: make(chan struct{})}
	d, addr := startDaemon(t, Config{MaxConcurrent: 1, MaxQueue: -1}, e)
	first := dial(t, addr, device.Config{DeviceID: "first"})
	second := dial(t, addr, device.Config{DeviceID: "second"})
	result := make(chan error, 1)
	go func() { _, _, err := ask(t, first, "hold the engine"); result <- err }()
	waitFor(t, func() bool { return e.calls.Load() == 1 })

	start := time.Now()
	_, _, err := ask(t, second, "me too")
	var perr *serialproto.Error
	if !errors.As(err, &perr) || perr.Code != serialproto.CodeBusy || !perr.Retryable() {
		t.Fatalf("want ERROR BUSY (retryable), got %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("BUSY took %v: it must be immediate", el)
	}
	close(e.release)
	if err := <-result; err != nil {
		t.Fatal(err)
	}
	if d.Stats().Busy.Load() != 1 || e.calls.Load() != 1 {
		t.Fatalf("busy %d, engine calls %d", d.Stats().Busy.Load(), e.calls.Load())
	}
}

func TestCancelStopsTheEngine(t *testing.T) {
	e := &testEngine{delay: 50 * time.Millisecond}
	d, addr := startDaemon(t, Config{}, e)
	c := dial(t, addr, device.Config{DeviceID: "impatient"})
	ctx, cancel := context.WithCancel(context.Background())
	var got int
	_, err := c.Ask(ctx, &serialproto.Infer{Prompt: strings.Repeat("word ", 100)}, func(b []byte) error {
		got++
		if got == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	waitFor(t, func() bool { return d.Stats().Canceled.Load() == 1 && e.cancelled.Load() == 1 })
}

func TestEngineFailureEndsStreamWithError(t *testing.T) {
	e := &testEngine{failAfter: 3}
	_, addr := startDaemon(t, Config{}, e)
	c := dial(t, addr, device.Config{DeviceID: "unlucky", MaxData: 32})
	text, _, err := ask(t, c, "one two three four five")
	var perr *serialproto.Error
	if !errors.As(err, &perr) || perr.Code != serialproto.CodeBackendFailed || !perr.Stream() || !perr.Retryable() {
		t.Fatalf("want a streamed ERROR BACKEND_FAILED, got %v", err)
	}
	if text != "echo: one two " { // the tokens produced before the crash
		t.Fatalf("text before the error: %q", text)
	}
}

// rawSession opens a session whose frames the test sends and reads itself.
func rawSession(t *testing.T, addr, id string) *device.UDP {
	t.Helper()
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if err := device.New(tr, device.Config{DeviceID: id}).Hello(context.Background()); err != nil {
		t.Fatal(err)
	}
	return tr
}

// rawInfer is the wire bytes of an INFER of prompt with seq.
func rawInfer(t *testing.T, seq uint8, prompt string) []byte {
	t.Helper()
	body, _ := (&serialproto.Infer{Prompt: prompt}).AppendBody(nil)
	frame, err := serialproto.AppendFrame(nil, inferFrame(t, seq, body))
	if err != nil {
		t.Fatal(err)
	}
	return frame
}

// inferFrame wraps an INFER body as a message of one fragment (§6).
func inferFrame(t *testing.T, seq uint8, body []byte) serialproto.Frame {
	t.Helper()
	datas, err := serialproto.Fragments(body, serialproto.PieceSize(serialproto.MaxData, false))
	if err != nil || len(datas) != 1 {
		t.Fatalf("inferFrame: %v", err)
	}
	return serialproto.Frame{Version: 1, Cmd: serialproto.CmdInfer, Flags: serialproto.FlagFragment, Seq: seq, Data: datas[0]}
}

// TestRetransmittedInferRunsOnce sends the same INFER frame three times:
// the engine must run once and every copy is answered.
func TestRetransmittedInferRunsOnce(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{}, e)
	tr := rawSession(t, addr, "dup")
	frame := rawInfer(t, 9, "once")
	acks := 0
	for range 3 {
		_ = tr.Send(frame)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		f, err := tr.Recv(deadline)
		if err != nil {
			break
		}
		if f.Cmd == serialproto.CmdAck && f.Seq == 9 {
			acks++
		}
		if f.Cmd == serialproto.CmdDone {
			ackBody, _ := (&serialproto.Ack{Next: 2, Window: 4}).AppendBody(nil)
			ack, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdAck, Seq: 9, Data: ackBody})
			_ = tr.Send(ack)
		}
	}
	if e.calls.Load() != 1 || acks != 3 {
		t.Fatalf("engine ran %d times, %d ACKs", e.calls.Load(), acks)
	}
}

func TestProtocolErrors(t *testing.T) {
	_, addr := startDaemon(t, Config{}, &testEngine{})
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	roundTrip := func(f serialproto.Frame) *serialproto.Error {
		t.Helper()
		raw, _ := serialproto.AppendFrame(nil, f)
		_ = tr.Send(raw)
		got, err := tr.Recv(time.Now().Add(2 * time.Second))
		if err != nil {
			t.Fatalf("no answer to %v: %v", f, err)
		}
		var e serialproto.Error
		if got.Cmd != serialproto.CmdError || e.UnmarshalBody(got.Data) != nil || got.Seq != f.Seq {
			t.Fatalf("answer to %v: %v", f, got)
		}
		return &e
	}
	for _, tc := range []struct {
		f    serialproto.Frame
		want serialproto.ErrorCode
	}{
		{serialproto.Frame{Version: 1, Cmd: serialproto.CmdInfer, Seq: 1, Data: []byte{0, 'h', 'i'}}, serialproto.CodeNoSession},
		{serialproto.Frame{Version: 1, Cmd: 0x2A, Seq: 2}, serialproto.CodeUnknownCommand},
		{serialproto.Frame{Version: 7, Cmd: serialproto.CmdPing, Seq: 3}, serialproto.CodeUnsupportedVersion},
		{serialproto.Frame{Version: 1, Cmd: serialproto.CmdHello, Seq: 4, Data: []byte{1, 1, 0, 8}}, serialproto.CodeMalformed},
	} {
		if e := roundTrip(tc.f); e.Code != tc.want {
			t.Errorf("%v: got %s, want %s", tc.f, e.Code, tc.want)
		}
	}
	c := device.New(tr, device.Config{DeviceID: "proto"})
	if err := c.Hello(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		f    serialproto.Frame
		want serialproto.ErrorCode
	}{
		{inferFrame(t, 20, []byte{0}), serialproto.CodeMalformed},
		{inferFrame(t, 21, []byte{3, 0x90, 1, 0, 'h'}), serialproto.CodeUnsupportedOption},
		{serialproto.Frame{Version: 1, Cmd: serialproto.CmdInfer, Seq: 24, Data: []byte{0, 'h', 'i'}}, serialproto.CodeMalformed}, // not a message (§6)
		{serialproto.Frame{Version: 1, Cmd: serialproto.CmdToken, Seq: 22, Data: []byte{0, 0, 'x'}}, serialproto.CodeUnexpected},
		{serialproto.Frame{Version: 1, Cmd: serialproto.CmdCancel, Seq: 23}, serialproto.CodeUnknownRequest},
	} {
		if e := roundTrip(tc.f); e.Code != tc.want {
			t.Errorf("%v: got %s, want %s", tc.f, e.Code, tc.want)
		}
	}
}

// TestGarbageDoesNotDisturbOthers: bursts of random datagrams from many
// sources while a device is served.
func TestGarbageDoesNotDisturbOthers(t *testing.T) {
	d, addr := startDaemon(t, Config{}, &testEngine{delay: time.Millisecond})
	ua, _ := net.ResolveUDPAddr("udp", addr)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			conn, err := net.DialUDP("udp", nil, ua)
			if err != nil {
				return
			}
			defer conn.Close()
			buf := make([]byte, 300)
			for i := 0; i < 5000; i++ { // bounded in count and time
				select {
				case <-stop:
					return
				default:
				}
				n := r.IntN(len(buf))
				for j := range n {
					buf[j] = byte(r.IntN(256))
				}
				if n > 0 && r.IntN(2) == 0 {
					buf[0] = serialproto.Magic
				}
				_, _ = conn.Write(buf[:n])
			}
		}()
	}
	c := dial(t, addr, device.Config{DeviceID: "steady"})
	for i := range 5 {
		prompt := fmt.Sprintf("question %d", i)
		text, _, err := ask(t, c, prompt)
		if err != nil || text != answerFor(prompt) {
			t.Fatalf("served device: %q %v", text, err)
		}
	}
	close(stop)
	wg.Wait()
	if d.Stats().BadFrames.Load() == 0 {
		t.Fatal("no bad frames counted")
	}
}

// TestSessionExpiry: a session silent for more than three heartbeats is
// closed by the janitor's next tick, and not before.
func TestSessionExpiry(t *testing.T) {
	d, addr, clk := startDaemonOnClock(t, Config{Heartbeat: time.Second}, &testEngine{})
	dial(t, addr, device.Config{DeviceID: "sleepy"})
	if d.Stats().Sessions.Load() != 1 {
		t.Fatal("no session")
	}
	start := clk.Now()
	advanceUntil(t, clk, 250*time.Millisecond, func() bool { return d.Stats().Sessions.Load() == 0 })
	if silent := clk.Now().Sub(start); silent <= 3*time.Second {
		t.Fatalf("expired after %v of silence, within three heartbeats", silent)
	}
}

// lossyTransport drops and duplicates frames in both directions with a
// seeded RNG, as Wi-Fi does.
type lossyTransport struct {
	device.Transport
	r          *rand.Rand
	loss, dupl float64
}

func (l *lossyTransport) Send(frame []byte) error {
	if l.r.Float64() < l.loss {
		return nil
	}
	if l.r.Float64() < l.dupl {
		_ = l.Transport.Send(frame)
	}
	return l.Transport.Send(frame)
}

func (l *lossyTransport) Recv(deadline time.Time) (serialproto.Frame, error) {
	for {
		f, err := l.Transport.Recv(deadline)
		if err != nil || l.r.Float64() >= l.loss {
			return f, err
		}
	}
}

func TestExactAnswerOverLossyLink(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{}, e)
	for seed := range uint64(3) {
		tr, err := device.DialUDP(addr)
		if err != nil {
			t.Fatal(err)
		}
		lossy := &lossyTransport{Transport: tr, r: rand.New(rand.NewPCG(seed, 99)), loss: 0.1, dupl: 0.05}
		c := device.New(lossy, device.Config{DeviceID: fmt.Sprintf("wifi-%d", seed), MaxData: 48, Window: 2, RTO: 50 * time.Millisecond, Retries: 20})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := c.Hello(ctx); err != nil {
			t.Fatal(err)
		}
		prompt := strings.Repeat(fmt.Sprintf("lossy link %d ", seed), 40)
		var text strings.Builder
		_, err = c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error { text.Write(b); return nil })
		cancel()
		tr.Close()
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if text.String() != answerFor(prompt) {
			t.Fatalf("seed %d: answer differs", seed)
		}
	}
	if e.calls.Load() != 3 {
		t.Fatalf("engine ran %d times for 3 requests", e.calls.Load())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder keeps every frame the device receives.
type recorder struct {
	device.Transport
	mu     sync.Mutex
	frames []serialproto.Frame
}

func (r *recorder) Recv(deadline time.Time) (serialproto.Frame, error) {
	f, err := r.Transport.Recv(deadline)
	if err == nil {
		c := f
		c.Data = append([]byte(nil), f.Data...)
		r.mu.Lock()
		r.frames = append(r.frames, c)
		r.mu.Unlock()
	}
	return f, err
}

func (r *recorder) wrap(t device.Transport) device.Transport {
	r.Transport = t
	return r
}

// withSeq returns the frames received with seq, from index from on.
func (r *recorder) withSeq(seq uint8, from int) []serialproto.Frame {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []serialproto.Frame
	for _, f := range r.frames[min(from, len(r.frames)):] {
		if f.Seq == seq {
			out = append(out, f)
		}
	}
	return out
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.frames)
}

// TestStreamInvariant: on a clean link every accepted INFER is answered by
// TOKEN chunks 0..n-1 in order, then one final chunk n — and nothing after
// it. A copy of a chunk already sent, byte for byte, is a retransmission
// (the 10 ms RTO floor fires spuriously when the race detector and a loaded
// box delay an ACK) and is skipped; a chunk index sent again with other
// bytes, out of order, or after the final chunk fails.
func TestStreamInvariant(t *testing.T) {
	_, addr := startDaemon(t, Config{DefaultMaxTokens: 1000}, &testEngine{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr, err := device.DialUDP(addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer tr.Close()
			rec := &recorder{Transport: tr}
			c := device.New(rec, device.Config{DeviceID: fmt.Sprintf("inv-%d", i), MaxData: 40, Window: uint8(1 + i%3)})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Hello(ctx); err != nil {
				t.Error(err)
				return
			}
			for q := range 3 {
				if _, err := c.Ask(ctx, &serialproto.Infer{Prompt: strings.Repeat(fmt.Sprintf("q%d ", q), 30)}, func([]byte) error { return nil }); err != nil {
					t.Error(err)
					return
				}
			}
			time.Sleep(50 * time.Millisecond) // anything sent after a final chunk would arrive now
			streams := map[uint8][]serialproto.Frame{}
			rec.mu.Lock()
			for _, f := range rec.frames {
				if f.Cmd != serialproto.CmdToken && f.Cmd != serialproto.CmdDone && f.Cmd != serialproto.CmdError {
					continue
				}
				if isCopy(streams[f.Seq], f) {
					continue
				}
				streams[f.Seq] = append(streams[f.Seq], f)
			}
			rec.mu.Unlock()
			if len(streams) != 3 {
				t.Errorf("device %d: %d streams, want 3", i, len(streams))
			}
			for seq, fs := range streams {
				for k, f := range fs {
					chunk := int(f.Data[0])<<8 | int(f.Data[1])
					last := k == len(fs)-1
					if chunk != k || (f.Cmd == serialproto.CmdToken) == last {
						t.Errorf("device %d seq %d: frame %d is %s chunk %d", i, seq, k, f.Cmd, chunk)
					}
				}
			}
		}()
	}
	wg.Wait()
}

// isCopy reports whether f repeats, byte for byte, a frame already in fs.
func isCopy(fs []serialproto.Frame, f serialproto.Frame) bool {
	for _, g := range fs {
		if g.Cmd == f.Cmd && bytes.Equal(g.Data, f.Data) {
			return true
		}
	}
	return false
}

// TestDefaultHistoryHoldsTenTurns: with the default MaxHistory a 10-turn
// chat reaches its tenth turn with all nine earlier turns, so no turn of
// it starts its prompt differently from the turn before (the target of
// mcpctl bench --scenario chat, docs/caching.md).
func TestDefaultHistoryHoldsTenTurns(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{}, e)
	c := dial(t, addr, device.Config{DeviceID: "ten"})
	for turn := range 10 {
		if _, _, err := ask(t, c, fmt.Sprintf("turn %d", turn)); err != nil {
			t.Fatal(err)
		}
	}
	reqs := e.requests()
	for i := 1; i < len(reqs); i++ {
		if prev, cur := reqs[i-1].Messages, reqs[i].Messages; !startsWith(cur, prev) {
			t.Fatalf("request %d does not start as request %d did:\n%+v\n%+v", i+1, i, cur, prev)
		}
	}
	if tenth := reqs[9].Messages; len(tenth) != 19 || tenth[0].Content != "turn 0" {
		t.Fatalf("tenth request: %d messages, want 19: %+v", len(tenth), tenth)
	}
	// Each answer comes back with the token ids the engine generated for
	// it, one per word here (the in-process engine evaluates them instead
	// of the answer's text tokenised again).
	for _, m := range reqs[9].Messages {
		words := len(strings.SplitAfter(m.Content, " "))
		if m.Role == backends.RoleAssistant && (len(m.Tokens) != words || m.Tokens[0] != 1000) {
			t.Fatalf("answer %q came back with tokens %v", m.Content, m.Tokens)
		}
	}
}

// startsWith reports whether msgs starts with every message of prefix.
func startsWith(msgs, prefix []backends.Message) bool {
	return len(msgs) >= len(prefix) && slices.EqualFunc(msgs[:len(prefix)], prefix, func(a, b backends.Message) bool {
		return reflect.DeepEqual(a, b)
	})
}

// TestContextTrimKeepsPrefix: when the conversation outgrows the model's
// context, the daemon drops the older half of the history at once, so the
// turns after a drop start their prompts as the turn before did (what an
// engine's KV cache reuses) until the context is full again; dropping the
// oldest turn alone would change the prompt's start at every turn once
// the context is full. Answers stay those of the engine for each prompt.
func TestContextTrimKeepsPrefix(t *testing.T) {
	const ctxWords, turns = 100, 20
	e := &testEngine{contextTotal: ctxWords}
	d, addr := startDaemon(t, Config{DefaultMaxTokens: 1000, MaxHistory: 1000}, e)
	c := dial(t, addr, device.Config{DeviceID: "long"})
	system := func(m *serialproto.Infer) { m.Set, m.System = m.Set.With(serialproto.OptSystem), "be brief please" }
	for turn := range turns {
		prompt := fmt.Sprintf("turn %d: how warm is it now", turn)
		if text, _, err := ask(t, c, prompt, system); err != nil || text != answerFor(prompt) {
			t.Fatalf("turn %d: %q %v", turn, text, err)
		}
	}
	var ran [][]backends.Message // the conversation each turn ran with
	for _, r := range e.requests() {
		n := 0
		for _, m := range r.Messages {
			n += len(strings.Fields(m.Content))
		}
		if n <= ctxWords {
			ran = append(ran, r.Messages)
		}
	}
	if len(ran) != turns {
		t.Fatalf("%d conversations ran, want %d", len(ran), turns)
	}
	changed := 0
	for i := 1; i < len(ran); i++ {
		if !startsWith(ran[i], ran[i-1]) {
			changed++
		}
	}
	// 15 words a turn, 10 for the system and new prompts: 6 turns fit; at
	// the 7th the history halves to 3, then grows back to 6: the start
	// changes at turns 7, 11, 15 and 19 (one turn in four), where dropping
	// one turn at a time changes it at every turn from the 7th (14 times).
	trims := d.Stats().HistoryTrimmed.Load()
	if changed == 0 || trims == 0 || changed > turns/4 {
		t.Fatalf("the prompt's start changed at %d of %d turns (%d trims); want 1..%d", changed, turns, trims, turns/4)
	}
}

// TestHistoryTrimmedToContext: a conversation that outgrows the model's
// context drops its oldest whole turns — the system prompt and the new
// prompt stay — instead of failing every INFER with TOO_LARGE until
// NEW_CHAT; a prompt too long on its own is still TOO_LARGE.
func TestHistoryTrimmedToContext(t *testing.T) {
	e := &testEngine{contextTotal: 40}
	d, addr := startDaemon(t, Config{DefaultMaxTokens: 1000}, e)
	c := dial(t, addr, device.Config{DeviceID: "chatty"})
	system := func(m *serialproto.Infer) { m.Set, m.System = m.Set.With(serialproto.OptSystem), "be brief please" }
	for turn := range 12 {
		prompt := fmt.Sprintf("turn %d: how warm is it now", turn)
		if text, _, err := ask(t, c, prompt, system); err != nil || text != answerFor(prompt) {
			t.Fatalf("turn %d: %q %v", turn, text, err)
		}
	}
	if d.Stats().HistoryTrimmed.Load() == 0 {
		t.Fatal("no turn was dropped")
	}
	e.mu.Lock()
	last := e.seen[len(e.seen)-1]
	e.mu.Unlock()
	msgs := last.Messages
	if msgs[0].Role != backends.RoleSystem || msgs[0].Content != "be brief please" || msgs[len(msgs)-1].Content != "turn 11: how warm is it now" {
		t.Fatalf("last conversation: %+v", msgs)
	}
	for i, m := range msgs[1 : len(msgs)-1] { // whole turns: user, assistant, user, …
		if want := []backends.Role{backends.RoleUser, backends.RoleAssistant}[i%2]; m.Role != want {
			t.Fatalf("message %d is %s, want %s: %+v", i+1, m.Role, want, msgs)
		}
	}
	if len(msgs) < 4 || !strings.HasPrefix(msgs[1].Content, "turn ") {
		t.Fatalf("nothing of the history kept: %+v", msgs)
	}
	long := strings.Repeat("word ", 50)
	if _, _, err := ask(t, c, long, system); errCode(err) != serialproto.CodeTooLarge {
		t.Fatalf("a prompt too long alone: %v, want TOO_LARGE", err)
	}
}
