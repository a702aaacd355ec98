package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Every finished request — a device's over UDP, a failed one, a local
// application's — gets exactly one INFO line with who, where, tokens, time
// to first token, total time and outcome.
func TestOneLogLinePerRequest(t *testing.T) {
	logs := &logRecords{}
	e := &testEngine{}
	d, addr := startDaemonLogging(t, Config{DefaultMaxTokens: 1000}, e, slog.New(logs))
	c := dial(t, addr, device.Config{DeviceID: "greenhouse-1"})
	if _, _, err := ask(t, c, "how warm is it"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return logs.count(slog.LevelInfo, "request") == 1 })
	line := logs.matching(slog.LevelInfo, "request")[0]
	want := regexp.MustCompile(`^request device=greenhouse-1 link=udp:127\.0\.0\.1:\d+ seq=\d+ backend=test-engine tokens_in=\d+ tokens_out=5 ttft=\d+(\.\d+)?m?s total=\d+(\.\d+)?m?s outcome=done$`)
	if !want.MatchString(line) {
		t.Fatalf("request line %q\nwant %v", line, want)
	}

	// A local application's request.
	if _, err := d.Generate(context.Background(), LocalRequest{Client: "cli", Prompt: "hi"}, func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	line = logs.matching(slog.LevelInfo, "request")[1]
	if !strings.HasPrefix(line, "request device=cli link=http backend=test-engine") || !strings.Contains(line, "outcome=done") || strings.Contains(line, "seq=") {
		t.Fatalf("local request's line %q", line)
	}
	if n := logs.count(slog.LevelInfo, "request"); n != 2 {
		t.Fatalf("%d request lines for 2 requests", n)
	}

	// A failing engine (its own daemon: the engine's settings are read
	// by the daemon's goroutines): outcome, protocol code and cause.
	failLogs := &logRecords{}
	_, failAddr := startDaemonLogging(t, Config{DefaultMaxTokens: 1000}, &testEngine{failAfter: 2}, slog.New(failLogs))
	fc := dial(t, failAddr, device.Config{DeviceID: "greenhouse-1"})
	if _, _, err := ask(t, fc, "one two three four"); err == nil {
		t.Fatal("no error from a failing engine")
	}
	waitFor(t, func() bool { return failLogs.count(slog.LevelInfo, "request") == 1 })
	line = failLogs.matching(slog.LevelInfo, "request")[0]
	for _, part := range []string{"device=greenhouse-1", "tokens_out=2", "outcome=failed", "code=BACKEND_FAILED", "err=", "simulated engine crash"} {
		if !strings.Contains(line, part) {
			t.Errorf("failed request's line %q lacks %q", line, part)
		}
	}
}

// TestRequestLinesBounded: a device asking many times in one second gets
// remoteRequestLines request lines at info, the rest counted (and written
// at debug); the first line of the next second says how many were held
// back. A flood of refused INFERs is sampled the same way ("request
// refused"). The daemon's clock is fake, so "one second" is the test's.
func TestRequestLinesBounded(t *testing.T) {
	logs := &logRecords{}
	e := &testEngine{}
	clk := newFakeClock()
	d, err := newDaemon(Config{PeerRate: -1, DefaultMaxTokens: 1000}, e, slog.New(logs), clk)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)
	c := dial(t, addr, device.Config{DeviceID: "chatty"})
	const n = 3 * remoteRequestLines
	for range n {
		if _, _, err := ask(t, c, "again"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return d.Stats().SuppressedLogs()["request"] == n-remoteRequestLines })
	if got := logs.count(slog.LevelInfo, "request"); got != remoteRequestLines {
		t.Fatalf("%d request lines at info for %d requests in one second, want %d", got, n, remoteRequestLines)
	}
	if got := logs.count(slog.LevelDebug, "request"); got != n-remoteRequestLines {
		t.Fatalf("%d held-back request lines at debug, want %d", got, n-remoteRequestLines)
	}
	clk.Advance(time.Second)
	if _, _, err := ask(t, c, "a second later"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return logs.count(slog.LevelInfo, "request") == remoteRequestLines+1 })
	last := logs.matching(slog.LevelInfo, "request")[remoteRequestLines]
	if want := fmt.Sprintf(" suppressed=%d", n-remoteRequestLines); !strings.HasSuffix(last, want) {
		t.Fatalf("next second's line %q lacks %q", last, want)
	}

	// Refused INFERs: the engine is held, the queue is off, so a second
	// device's INFERs are refused BUSY — a flood of them, sampled.
	refLogs := &logRecords{}
	hog := &testEngine{release: make(chan struct{})}
	held, err := newDaemon(Config{PeerRate: -1, MaxConcurrent: 1, MaxQueue: -1}, hog, slog.New(refLogs), newFakeClock())
	if err != nil {
		t.Fatal(err)
	}
	heldAddr, _ := runDaemon(t, held)
	var release sync.Once
	free := func() { release.Do(func() { close(hog.release) }) }
	t.Cleanup(free)
	holder := dial(t, heldAddr, device.Config{DeviceID: "holder"})
	holderDone := make(chan error, 1)
	go func() { _, _, err := ask(t, holder, "hold"); holderDone <- err }()
	waitFor(t, func() bool { return held.Stats().Accepted.Load() == 1 })
	tr := rawSession(t, heldAddr, "refused")
	const refusals = 100 // seqs from 10: the HELLO took 1

	for i := range refusals {
		if err := tr.Send(rawInfer(t, uint8(i+10), "let me in")); err != nil {
			t.Fatal(err)
		}
		f, err := tr.Recv(time.Now().Add(2 * time.Second))
		if err != nil || f.Cmd != serialproto.CmdError {
			t.Fatalf("INFER %d: want ERROR BUSY, got %v %v", i, f, err)
		}
	}
	waitFor(t, func() bool { return held.Stats().SuppressedLogs()["request refused"] == refusals-remoteLinesPerEvent })
	lines := refLogs.matching(slog.LevelInfo, "request refused")
	if len(lines) != remoteLinesPerEvent {
		t.Fatalf("%d refusal lines at info for %d refusals, want %d", len(lines), refusals, remoteLinesPerEvent)
	}
	for _, part := range []string{"device=refused", "link=udp:", "code=BUSY", "reason="} {
		if !strings.Contains(lines[0], part) {
			t.Errorf("refusal line %q lacks %q", lines[0], part)
		}
	}
	free() // the held request ends before the daemons stop
	if err := <-holderDone; err != nil {
		t.Fatal(err)
	}
}

// TestBusyHelloLinesBounded: HELLOs refused BUSY for a full session table
// get a sampled "HELLO refused" line — remoteLinesPerEvent in one second,
// the rest counted.
func TestBusyHelloLinesBounded(t *testing.T) {
	logs := &logRecords{}
	e := &testEngine{release: make(chan struct{})}
	var once sync.Once
	free := func() { once.Do(func() { close(e.release) }) }
	t.Cleanup(free)
	d, err := newDaemon(Config{PeerRate: -1, MaxSessions: 1}, e, slog.New(logs), newFakeClock())
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)
	// The only session, busy being served: nobody to evict.
	holder := dial(t, addr, device.Config{DeviceID: "first"})
	held := make(chan error, 1)
	go func() { _, _, err := ask(t, holder, "hold"); held <- err }()
	waitFor(t, func() bool { return e.calls.Load() == 1 })
	const n = 40
	for i := range n {
		tr, err := device.DialUDP(addr)
		if err != nil {
			t.Fatal(err)
		}
		err = device.New(tr, device.Config{DeviceID: fmt.Sprintf("late-%d", i)}).Hello(context.Background())
		tr.Close()
		var perr *serialproto.Error
		if !errors.As(err, &perr) || perr.Code != serialproto.CodeBusy {
			t.Fatalf("HELLO %d with the table full: want ERROR BUSY, got %v", i, err)
		}
	}
	waitFor(t, func() bool { return d.Stats().SuppressedLogs()["HELLO refused"] == n-remoteLinesPerEvent })
	lines := logs.matching(slog.LevelInfo, "HELLO refused")
	if len(lines) != remoteLinesPerEvent || !strings.Contains(lines[0], "device=late-0") || !strings.Contains(lines[0], "code=BUSY reason=too many sessions") {
		t.Fatalf("%d lines at info for %d busy HELLOs, want %d: %q", len(lines), n, remoteLinesPerEvent, lines)
	}
	free()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}
