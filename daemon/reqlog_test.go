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

	// A failing engine: outcome, protocol code and cause.
	e.failAfter = 2
	if _, _, err := ask(t, c, "one two three four"); err == nil {
		t.Fatal("no error from a failing engine")
	}
	waitFor(t, func() bool { return logs.count(slog.LevelInfo, "request") == 2 })
	line = logs.matching(slog.LevelInfo, "request")[1]
	for _, part := range []string{"device=greenhouse-1", "tokens_out=2", "outcome=failed", "code=BACKEND_FAILED", "err=", "simulated engine crash"} {
		if !strings.Contains(line, part) {
			t.Errorf("failed request's line %q lacks %q", line, part)
		}
	}
	e.failAfter = 0

	// A local application's request.
	if _, err := d.Generate(context.Background(), LocalRequest{Client: "cli", Prompt: "hi"}, func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	line = logs.matching(slog.LevelInfo, "request")[2]
	if !strings.HasPrefix(line, "request device=cli link=http backend=test-engine") || !strings.Contains(line, "outcome=done") || strings.Contains(line, "seq=") {
		t.Fatalf("local request's line %q", line)
	}
	if n := logs.count(slog.LevelInfo, "request"); n != 3 {
		t.Fatalf("%d request lines for 3 requests", n)
	}
}
