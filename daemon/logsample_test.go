package daemon

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// TestLogSamplerBounds: per event and in total, at most the bound of lines
// a second; the next line out carries the count suppressed before it.
func TestLogSamplerBounds(t *testing.T) {
	var l logSampler
	t0 := time.Now()
	out := map[string]int{}
	for i := range 1000 {
		for _, ev := range []string{"a", "b", "c", "d"} {
			if ok, _ := l.take(ev, t0.Add(time.Duration(i)*time.Microsecond)); ok {
				out[ev]++
			}
		}
	}
	total := 0
	for ev, n := range out {
		if n > remoteLinesPerEvent {
			t.Errorf("event %s: %d lines in one second", ev, n)
		}
		total += n
	}
	if total != remoteLinesTotal {
		t.Fatalf("%d lines in one second, want the total bound %d", total, remoteLinesTotal)
	}
	ok, suppressed := l.take("a", t0.Add(time.Second))
	if !ok || suppressed != 1000-int64(out["a"]) {
		t.Fatalf("a second later: ok %v, suppressed %d, want %d", ok, suppressed, 1000-out["a"])
	}
}

// TestRemoteLogFloodBounded: a device sending thousands of ERROR frames
// and badly signed frames causes a bounded number of log lines (at info);
// the rest are counted, and written at debug level only.
func TestRemoteLogFloodBounded(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		t.Run(level.String(), func(t *testing.T) {
			var logs syncBuf
			clk := newFakeClock()
			d, err := newDaemon(Config{PeerRate: -1}, &testEngine{}, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: level})), clk)
			if err != nil {
				t.Fatal(err)
			}
			addr, _ := runDaemon(t, d)
			tr := rawSession(t, addr, "noisy")
			const n = 2000
			for i := range n {
				body, _ := serialproto.NewError(serialproto.CodeInternal, "oops").AppendBody(nil)
				raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdError, Seq: uint8(i), Data: body})
				if err := tr.Send(raw); err != nil {
					t.Fatal(err)
				}
				if i%64 == 0 {
					time.Sleep(time.Millisecond) // let the socket buffer drain
				}
			}
			waitFor(t, func() bool { return strings.Count(logs.String(), "device reported an error") >= remoteLinesPerEvent })
			waitFor(t, func() bool {
				return d.Stats().FramesIn.Load() >= n/2 // most arrived
			})
			time.Sleep(50 * time.Millisecond)
			lines := strings.Count(logs.String(), "device reported an error")
			suppressed := d.Stats().SuppressedLogs()["device reported an error"]
			switch level {
			case slog.LevelInfo:
				if lines != remoteLinesPerEvent || suppressed == 0 {
					t.Fatalf("%d lines at info (want %d), %d suppressed", lines, remoteLinesPerEvent, suppressed)
				}
			case slog.LevelDebug:
				if int64(lines) != int64(remoteLinesPerEvent)+suppressed {
					t.Fatalf("at debug: %d lines, want %d sampled + %d suppressed", lines, remoteLinesPerEvent, suppressed)
				}
			}
		})
	}
}
