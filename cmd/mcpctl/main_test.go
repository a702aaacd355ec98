package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func runCmd(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err := run(ctx, args, strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), err
}

// TestLoopbackRoundTrip runs the whole exchange over real UDP sockets: the
// answer printed must be the prompt, byte for byte (the peer echoes it),
// whatever the device's frame size and window.
func TestLoopbackRoundTrip(t *testing.T) {
	for _, tc := range []struct{ maxData, window string }{{"256", "8"}, {"64", "2"}, {"32", "1"}} {
		prompt := "Grüße aus dem Gewächshaus 🌱 " + strings.Repeat("long prompt ", 200)
		out, errOut, err := runCmd(t, "", "loopback", "-max-data", tc.maxData, "-window", tc.window, "-prompt", prompt)
		if err != nil {
			t.Fatalf("max-data %s window %s: %v\n%s", tc.maxData, tc.window, err, errOut)
		}
		if out != prompt+"\n" {
			t.Fatalf("answer differs from the echoed prompt:\n%q", out)
		}
		if !strings.Contains(errOut, "CRC-32C") || !strings.Contains(errOut, " ok,") {
			t.Fatalf("summary: %s", errOut)
		}
	}
}

func TestDecodeCommand(t *testing.T) {
	out, _, err := runCmd(t, "", "decode", "55 01 00 04 03 07 70 69 6e 67 81")
	if err != nil || !strings.Contains(out, "PING[-] seq=7") {
		t.Fatalf("%v: %s", err, out)
	}
	if _, _, err := runCmd(t, "", "decode", "55010004030770696e6782"); err == nil {
		t.Fatal("a bad CRC was not reported as an error")
	}
	out, _, err = runCmd(t, "ff 00 55010004030770696e6781 55", "decode", "-hex")
	if err != nil || !strings.Contains(out, "@2 v1 PING") || !strings.Contains(out, "1 frame, 3 bytes skipped") {
		t.Fatalf("%v: %s", err, out)
	}
}

func TestUsage(t *testing.T) {
	if _, errOut, err := runCmd(t, "", "frobnicate"); err == nil || !strings.Contains(errOut, "Commands:") {
		t.Fatalf("unknown command: %v %s", err, errOut)
	}
	if out, _, err := runCmd(t, "", "--help"); err != nil || !strings.Contains(out, "loopback") {
		t.Fatalf("--help: %v %s", err, out)
	}
}
