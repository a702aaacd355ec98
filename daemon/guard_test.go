package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

func errCode(err error) serialproto.ErrorCode {
	var e *serialproto.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func hello(addr string, cfg device.Config) (*device.Client, error) {
	tr, err := device.DialUDP(addr)
	if err != nil {
		return nil, err
	}
	cfg.Retries, cfg.RTO = 2, 100*time.Millisecond
	c := device.New(tr, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c, c.Hello(ctx)
}

// TestPolicyRefusals: the policy's refusals reach the device as the
// protocol's errors, and are counted.
func TestPolicyRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy AccessPolicy
		device string
		model  string
		want   serialproto.ErrorCode // 0: served
	}{
		{"open", AccessPolicy{}, "any", "", 0},
		{"source network refused", AccessPolicy{Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, "any", "", serialproto.CodeForbidden},
		{"source network allowed", AccessPolicy{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, "any", "", 0},
		{"unlisted device", AccessPolicy{OnlyListed: true, Devices: map[string]DeviceRule{"pump": {}}}, "valve", "", serialproto.CodeForbidden},
		{"listed device", AccessPolicy{OnlyListed: true, Devices: map[string]DeviceRule{"pump": {}}}, "pump", "", 0},
		{"model refused", AccessPolicy{Devices: map[string]DeviceRule{"pump": {Models: []string{"small"}}}}, "pump", "large", serialproto.CodeForbidden},
		{"model allowed", AccessPolicy{Devices: map[string]DeviceRule{"pump": {Models: []string{"small"}}}}, "pump", "small", 0},
		{"default model always allowed", AccessPolicy{Devices: map[string]DeviceRule{"pump": {Models: []string{"small"}}}}, "pump", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &testEngine{}
			d, addr := startDaemon(t, Config{Policy: tc.policy}, e)
			c, err := hello(addr, device.Config{DeviceID: tc.device})
			if err == nil {
				_, _, err = ask(t, c, "status?", func(m *serialproto.Infer) {
					if tc.model != "" {
						m.Model = tc.model
						m.Set = m.Set.With(serialproto.OptModel)
					}
				})
			}
			if got := errCode(err); got != tc.want {
				t.Fatalf("got %v (code %v), want code %v", err, got, tc.want)
			}
			wantForbidden := int64(0)
			if tc.want == serialproto.CodeForbidden {
				wantForbidden = 1
			}
			if f := d.Stats().Forbidden.Load(); f < wantForbidden || (wantForbidden == 0 && f != 0) {
				t.Fatalf("forbidden counted %d", f)
			}
			if tc.want != 0 && e.calls.Load() != 0 {
				t.Fatal("a refused request reached the engine")
			}
		})
	}
}

// TestTokenBudget: a request is cut to what is left of the device's
// budget; once spent, INFERs get RATE_LIMITED until the period ends.
func TestTokenBudget(t *testing.T) {
	e := &testEngine{}
	d, addr, clk := startDaemonOnClock(t, Config{Policy: AccessPolicy{Devices: map[string]DeviceRule{
		"meter": {TokenBudget: 12, BudgetPeriod: 400 * time.Millisecond},
	}}}, e)
	c, err := hello(addr, device.Config{DeviceID: "meter"})
	if err != nil {
		t.Fatal(err)
	}
	prompt := "one two three four five six seven eight"                    // "echo: " + 8 words = 9 tokens
	if _, done, err := ask(t, c, prompt); err != nil || done.Tokens != 9 { // 3 left
		t.Fatalf("first: %v %+v", err, done)
	}
	text, done, err := ask(t, c, prompt)
	if err != nil || done.Tokens != 3 || done.Reason != serialproto.StopLength || text != "echo: one two " {
		t.Fatalf("second, cut to the 3 tokens left: %v %+v %q", err, done, text)
	}
	if _, _, err := ask(t, c, prompt); errCode(err) != serialproto.CodeRateLimited {
		t.Fatalf("third, budget spent: %v", err)
	}
	calls := e.calls.Load()
	clk.Advance(400 * time.Millisecond) // a new period (well within the session's heartbeats)
	if _, done, err := ask(t, c, prompt); err != nil || done.Tokens != 9 {
		t.Fatalf("after the period: %v %+v", err, done)
	}
	if e.calls.Load() != calls+1 || d.Stats().RateLimited.Load() != 1 {
		t.Fatalf("engine calls %d→%d, rate-limited %d", calls, e.calls.Load(), d.Stats().RateLimited.Load())
	}
}

// TestPeerRateLimit: a source sending faster than its rate has the excess
// dropped and counted, hears RATE_LIMITED at most once a second, gets its
// rate back as time passes, and another device is still served.
func TestPeerRateLimit(t *testing.T) {
	e := &testEngine{}
	d, addr, clk := startDaemonOnClock(t, Config{PeerRate: 50, PeerBurst: 20}, e)
	flood := rawSession(t, addr, "flooder") // the HELLO took one token
	sent := 0
	burst := func(n int) (pongs, limited int) {
		b, _ := (&serialproto.Ping{}).AppendBody(nil)
		for range n {
			// 16 PINGs outstanding at most, retransmitted over and over, as a
			// device may (§5): a device that ran hundreds of seqs ahead of
			// what the daemon saw would find its requests stale.
			seq := uint8(2 + sent%16)
			sent++
			raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdPing, Seq: seq, Data: b})
			_ = flood.Send(raw)
			time.Sleep(50 * time.Microsecond) // paced so that the socket buffer drops nothing
		}
		for {
			f, err := flood.Recv(time.Now().Add(200 * time.Millisecond))
			if err != nil {
				return pongs, limited
			}
			switch f.Cmd {
			case serialproto.CmdPong:
				pongs++
			case serialproto.CmdError:
				if serialproto.ErrorCode(f.Data[0]) == serialproto.CodeRateLimited {
					limited++
				}
			}
		}
	}
	// The clock stands still: the bucket's 19 tokens left, then nothing.
	if pongs, limited := burst(200); pongs != 19 || limited != 1 {
		t.Fatalf("200 PINGs at once: %d PONGs (want 19), %d RATE_LIMITED (want 1)", pongs, limited)
	}
	if got := d.Stats().RateLimited.Load(); got != 200-19 {
		t.Fatalf("rate-limited counted %d, dropped %d", got, 200-19)
	}
	// 200 ms at 50 a second: 10 tokens; the last answer was 200 ms ago.
	clk.Advance(200 * time.Millisecond)
	if pongs, limited := burst(20); pongs != 10 || limited != 0 {
		t.Fatalf("200 ms later: %d PONGs (want 10), %d RATE_LIMITED (want 0)", pongs, limited)
	}
	// A second later the bucket is full (20), and RATE_LIMITED may be said again.
	clk.Advance(time.Second)
	if pongs, limited := burst(30); pongs != 20 || limited != 1 {
		t.Fatalf("a second later: %d PONGs (want 20), %d RATE_LIMITED (want 1)", pongs, limited)
	}
	// The limit is the source address's, whatever the port: a second
	// socket of the flooding host is limited too; another host is served.
	same, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer same.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := device.New(same, device.Config{DeviceID: "second-port", Retries: 1, RTO: 100 * time.Millisecond}).Hello(ctx); err == nil {
		t.Fatal("a second port of the flooding address was not limited")
	}
	c := dialFrom(t, "127.0.0.2:0", addr, device.Config{DeviceID: "neighbour"})
	if text, _, err := ask(t, c, "still there?"); err != nil || text != answerFor("still there?") {
		t.Fatalf("neighbour: %q %v", text, err)
	}
}

// TestPeerLimiterBounded: the limiter never tracks more than max sources.
func TestPeerLimiterBounded(t *testing.T) {
	l := peerLimiter{rate: 10, burst: 5, max: 100}
	now := time.Now()
	for i := range 10000 {
		if ok, _ := l.allow(limitKey{addr: netip.AddrFrom4([4]byte{10, 0, byte(i / 256), byte(i % 256)})}, now); !ok {
			t.Fatalf("source %d refused on its first frame", i)
		}
		if len(l.peers) > 100 {
			t.Fatalf("%d sources tracked", len(l.peers))
		}
	}
}

// TestEvictHalfOpenSessions: when the daemon is full, a new device takes
// the place of the oldest half-open session — a HELLO and nothing since —
// and never that of a device being served or with a request in flight
// (it is not evicted before its answer).
func TestEvictHalfOpenSessions(t *testing.T) {
	d, addr := startDaemon(t, Config{MaxSessions: 3, ShutdownDrain: 100 * time.Millisecond}, &testEngine{})
	served := dial(t, addr, device.Config{DeviceID: "served"})
	if _, _, err := ask(t, served, "a question"); err != nil {
		t.Fatal(err)
	}
	taker := rawSession(t, addr, "taker") // asks, never acknowledges the answer
	if err := taker.Send(rawInfer(t, 2, "flood")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return d.Stats().Accepted.Load() == 2 })
	rawSession(t, addr, "half-open")
	for i := range 3 { // the half-open one, then newcomer-0, then newcomer-1
		if _, err := hello(addr, device.Config{DeviceID: fmt.Sprintf("newcomer-%d", i)}); err != nil {
			t.Fatalf("newcomer %d: %v", i, err)
		}
	}
	if got := d.Stats().Evicted.Load(); got != 3 {
		t.Fatalf("evicted %d, want 3", got)
	}
	var left []string
	for _, s := range d.Snapshot(context.Background()).Sessions {
		left = append(left, s.Device)
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"newcomer-2", "served", "taker"}) {
		t.Fatalf("sessions left: %v", left)
	}
	if text, _, err := ask(t, served, "still here?"); err != nil || text != answerFor("still here?") {
		t.Fatalf("the served device after the evictions: %q %v", text, err)
	}
}

// TestAuthCountersByReason: unsigned, wrongly signed, replayed and stale
// frames in a signed session are each refused and counted under their
// reason; the key never reaches the logs.
func TestAuthCountersByReason(t *testing.T) {
	key := testKey(t, 0x3C)
	var logs syncBuf
	e := &testEngine{}
	d, addr := startDaemonLogging(t, Config{Keys: map[string]serialproto.Key{"signer": key}}, e,
		slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rec := &capture{Transport: tr}
	c := device.New(rec, device.Config{DeviceID: "signer", Key: key})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	firstPing := rec.sent[len(rec.sent)-1]
	rec.mu.Unlock()
	st := d.Stats()
	check := func(what string, counter interface{ Load() int64 }, send func()) {
		t.Helper()
		before, total := counter.Load(), st.AuthFailures.Load()
		send()
		waitFor(t, func() bool { return counter.Load() == before+1 && st.AuthFailures.Load() == total+1 })
	}
	check("replayed", &st.AuthReplay, func() { _ = tr.Send(firstPing) })
	// A replay is a copy of a frame already taken (UDP duplicates): no
	// AUTH_FAILED for it, which would make a device drop a good request.
	if f, err := tr.Recv(time.Now().Add(300 * time.Millisecond)); err == nil {
		t.Fatalf("the daemon answered a replayed frame with %v", f.Cmd)
	}
	check("unsigned", &st.AuthUnsigned, func() {
		raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdPing, Seq: 200})
		_ = tr.Send(raw)
	})
	check("forged", &st.AuthBadTag, func() {
		// A sound frame (its CRC recomputed) whose tag is wrong.
		g, _ := serialproto.Decode(firstPing)
		data := append([]byte(nil), g.Data...)
		data[len(data)-1] ^= 0xFF
		g.Data = data
		raw, _ := serialproto.AppendFrame(nil, g)
		_ = tr.Send(raw)
	})
	for range 70 { // slide the replay window past the first PING
		if _, err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	check("stale", &st.AuthStale, func() { _ = tr.Send(firstPing) })
	// Still served with the right key.
	var text strings.Builder
	if _, err := c.Ask(ctx, &serialproto.Infer{Prompt: "signed"}, func(b []byte) error { text.Write(b); return nil }); err != nil || text.String() != answerFor("signed") {
		t.Fatalf("after the attacks: %q %v", text.String(), err)
	}
	if strings.Contains(strings.ToLower(logs.String()), "3c3c3c3c") || strings.Contains(logs.String(), "<<<<") {
		t.Fatal("the key appears in the logs")
	}
	if !strings.Contains(logs.String(), "frame rejected") {
		t.Fatal("rejections were not logged at all: the log check above proves nothing")
	}
}

// TestTokenBudgetReserved: a running request holds its share of the budget,
// so a second one at the same time (the same device on another link)
// cannot overspend it.
func TestTokenBudgetReserved(t *testing.T) {
	release := make(chan struct{})
	e := &testEngine{release: release}
	d, addr := startDaemon(t, Config{ShutdownDrain: 100 * time.Millisecond, DefaultMaxTokens: 10, Policy: AccessPolicy{Devices: map[string]DeviceRule{"meter": {TokenBudget: 10}}}}, e)
	first, second := rawSession(t, addr, "meter"), rawSession(t, addr, "meter")
	if err := first.Send(rawInfer(t, 2, "a b c")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return d.Stats().Accepted.Load() == 1 })
	if err := second.Send(rawInfer(t, 2, "d e f")); err != nil {
		t.Fatal(err)
	}
	f, err := second.Recv(time.Now().Add(2 * time.Second))
	if err != nil || f.Cmd != serialproto.CmdError || serialproto.ErrorCode(f.Data[0]) != serialproto.CodeRateLimited {
		t.Fatalf("the second request while the first holds the budget: %v %v", f.Cmd, err)
	}
	close(release) // the first uses 4 of its 10 tokens and gives 6 back
	waitFor(t, func() bool { return d.Stats().Done.Load() == 1 })
	if err := second.Send(rawInfer(t, 3, "d e f")); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := second.Recv(time.Now().Add(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if f.Cmd == serialproto.CmdAck && f.Seq == 3 {
			break // accepted with what was given back
		}
		if f.Cmd == serialproto.CmdError {
			t.Fatalf("after the first finished: %s", serialproto.ErrorCode(f.Data[0]))
		}
	}
}

// TestNoReflectionToUnprovenSources: a source without a session — its
// address may be spoofed — never gets more bytes back than it sent,
// whatever it sends; a real device still opens a session and is served.
func TestNoReflectionToUnprovenSources(t *testing.T) {
	d, addr := startDaemon(t, Config{BoundLoopbackReplies: true}, &testEngine{})
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hello1, _ := (&serialproto.Hello{MinVersion: 1, MaxVersion: 1, MaxData: 64, Window: 1, BootNonce: 1, DeviceID: "x"}).AppendBody(nil)
	frames := []serialproto.Frame{
		{Version: 1, Cmd: serialproto.CmdPing, Seq: 1},                                   // NO_SESSION
		{Version: 1, Cmd: serialproto.CmdStatus, Seq: 2},                                 // NO_SESSION
		{Version: 1, Cmd: 0x2A, Seq: 3},                                                  // UNKNOWN_COMMAND
		{Version: 9, Cmd: serialproto.CmdPing, Seq: 4},                                   // UNSUPPORTED_VERSION
		{Version: 1, Cmd: serialproto.CmdToken, Seq: 5},                                  // UNEXPECTED
		{Version: 1, Cmd: serialproto.CmdBye, Seq: 6},                                    // BYE
		{Version: 1, Cmd: serialproto.CmdHello, Seq: 7, Data: []byte{1, 1, 0}},           // MALFORMED
		{Version: 1, Cmd: serialproto.CmdHello, Seq: 8, Data: hello1},                    // WELCOME, one byte more than the HELLO
		{Version: 1, Cmd: serialproto.CmdInfer, Seq: 9, Data: []byte{0, 1, 0, 'h', 'i'}}, // NO_SESSION
	}
	var sent, got int
	buf := make([]byte, 2048)
	for round := range 50 {
		for _, f := range frames {
			f.Seq += uint8(round * 10)
			raw, _ := serialproto.AppendFrame(nil, f)
			if _, err := conn.Write(raw); err != nil {
				t.Fatal(err)
			}
			sent += len(raw)
		}
		for {
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, err := conn.Read(buf)
			if err != nil {
				break
			}
			got += n
		}
	}
	if got == 0 || got > sent {
		t.Fatalf("sent %d bytes, got %d back: want 0 < got <= sent", sent, got)
	}
	if d.Stats().Unanswered.Load() == 0 {
		t.Fatal("nothing was left unanswered")
	}
	t.Logf("reply/request bytes %d/%d = %.2f; %d answers not sent", got, sent, float64(got)/float64(sent), d.Stats().Unanswered.Load())
	c := dial(t, addr, device.Config{DeviceID: "real"})
	if text, _, err := ask(t, c, "still served?"); err != nil || text != answerFor("still served?") {
		t.Fatalf("a real device: %q %v", text, err)
	}
}

// TestNoStreamAmplificationToUnprovenSources: a source that opens a session
// and asks, but never acknowledges a chunk — a spoofed HELLO and INFER whose
// answers go to a victim — gets no more bytes back than it sent, although
// its window (255) would let a whole long answer out, nine times over with
// the retransmissions; a real device, equally unproven until its first
// answer, is still served a long answer whole.
func TestNoStreamAmplificationToUnprovenSources(t *testing.T) {
	d, addr := startDaemon(t, Config{BoundLoopbackReplies: true, MaxRetransmits: 3, MinRTO: 5 * time.Millisecond, DefaultMaxTokens: 1000}, &testEngine{})
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var sent, got int
	write := func(f serialproto.Frame) {
		raw, err := serialproto.AppendFrame(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(raw); err != nil {
			t.Fatal(err)
		}
		sent += len(raw)
	}
	hello, _ := (&serialproto.Hello{MinVersion: 1, MaxVersion: 1, MaxData: 255, Window: 255, BootNonce: 7, DeviceID: "victim"}).AppendBody(nil)
	write(serialproto.Frame{Version: 1, Cmd: serialproto.CmdHello, Seq: 1, Data: hello})
	write(serialproto.Frame{Version: 1, Cmd: serialproto.CmdHello, Seq: 1, Data: hello}) // blind: the first WELCOME may not fit
	prompt := strings.TrimSpace(strings.Repeat("a ", 200))                               // 201 one-word chunks in the answer
	body, _ := (&serialproto.Infer{Prompt: prompt}).AppendBody(nil)
	pieces, err := serialproto.Fragments(body, serialproto.PieceSize(255, false))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pieces {
		write(serialproto.Frame{Version: 1, Cmd: serialproto.CmdInfer, Flags: serialproto.FlagFragment, Seq: 2, Data: p})
	}
	// Read until the daemon has given the stream up (3 retransmissions of
	// a few ms) and been silent for a while; bounded in time.
	buf := make([]byte, 2048)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			break
		}
		got += n
	}
	if got > sent {
		t.Fatalf("an unacknowledged stream to an unproven source: sent %d bytes, got %d back (%.1f×)", sent, got, float64(got)/float64(sent))
	}
	if d.Stats().Unanswered.Load() == 0 {
		t.Fatal("no chunk was held back")
	}
	t.Logf("reply/request bytes %d/%d = %.2f; %d transmissions held back", got, sent, float64(got)/float64(sent), d.Stats().Unanswered.Load())
	// Real devices: a long first answer, and a first answer whose first
	// chunk is larger than the budget (a one-letter id and prompt): the
	// device's repeated ACK adds to the budget.
	for _, tc := range []struct{ from, id, prompt string }{
		{"127.0.0.2:0", "real", strings.TrimSpace(strings.Repeat("b ", 200))},
		{"127.0.0.3:0", "r", "hi"},
	} {
		held := d.Stats().Unanswered.Load()
		c := dialFrom(t, tc.from, addr, device.Config{DeviceID: tc.id, Window: 8})
		if text, _, err := ask(t, c, tc.prompt); err != nil || text != answerFor(tc.prompt) {
			t.Fatalf("device %s's first answer: %q %v", tc.id, text, err)
		}
		t.Logf("device %s: %d transmissions held back", tc.id, d.Stats().Unanswered.Load()-held)
	}
}
