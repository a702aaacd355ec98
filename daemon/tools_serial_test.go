package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestToolsOverNoisyUART: device tools over a real pty pair paced at
// 115,200 baud with a bit error rate of 1e-3 between daemon and device —
// TOOLS, TOOL_CALL and TOOL_RESULT frames corrupted, resent after NACK
// BAD_FRAME or a timeout: every call's handler runs exactly once and the
// answer built on its result arrives whole (or a corruption the CRC-8
// missed is caught by the CRC-32C).
func TestToolsOverNoisyUART(t *testing.T) {
	if testing.Short() {
		t.Skip("paced serial line: slow")
	}
	e := &toolEngine{script: []backends.ToolCall{readSoil, readSoil}}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// A final ACK the line ate keeps its stream until the drain: 1 s.
	d, c, line := noisyUART(ctx, t, Config{ShutdownDrain: time.Second}, e, 7, "noisy-tools")
	var runs atomic.Int64
	t0 := time.Now()
	if err := c.DeclareTools(ctx, sensorTools(&runs)); err != nil {
		t.Fatal(err)
	}
	t.Logf("TOOLS took %v", time.Since(t0))
	for i := range 6 {
		before, t0 := runs.Load(), time.Now()
		text, _, err := askCtx(ctx, c, fmt.Sprintf("request %d", i), toolsOn)
		n := runs.Load() - before
		t.Logf("request %d: %v, %d handler runs, %q, %v", i, time.Since(t0), n, text, err)
		switch {
		case n != 2:
			t.Fatalf("request %d: the handler ran %d times for 2 calls", i, n)
		case errors.Is(err, device.ErrChecksum):
		case err != nil:
			t.Fatalf("request %d: %v", i, err)
		case text != "answer: 41 %":
			t.Fatalf("request %d: %q", i, text)
		}
	}
	toDevice, toDaemon := line.Stats()
	t.Logf("bits flipped: %d in %d bytes to the device, %d in %d to the daemon; the daemon saw %d bad frames",
		toDevice.FlippedBits, toDevice.Bytes, toDaemon.FlippedBits, toDaemon.Bytes, d.Stats().BadFrames.Load())
	if toDevice.FlippedBits == 0 || toDaemon.FlippedBits == 0 {
		t.Fatal("the line corrupted nothing: the test proves nothing")
	}
}

func askCtx(ctx context.Context, c *device.Client, prompt string, opts ...func(*serialproto.Infer)) (string, *serialproto.Done, error) {
	m := &serialproto.Infer{Prompt: prompt}
	for _, o := range opts {
		o(m)
	}
	var text []byte
	done, err := c.Ask(ctx, m, func(b []byte) error { text = append(text, b...); return nil })
	return string(text), done, err
}
