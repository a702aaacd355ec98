package daemon

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/clients/device"
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
