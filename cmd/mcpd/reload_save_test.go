package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestReloadSavesConversations: a reload (SIGHUP) writes the devices'
// conversations and the engine's warm cache while serving (service.apply),
// so a crash after it loses neither. The real binary with llama.cpp and
// the periodic save off (--save-interval 0s): a signed device asks two
// turns, nothing is on disk yet, mcpd is reloaded, then killed (SIGKILL:
// no save at stop). The next mcpd on the same state directory gives the
// same device client (NO_SESSION, HELLO with RESUME, the question again)
// its conversation back — the third turn's prompt holds the first two —
// and finds the second turn's prompt in the warm file. Without the
// reload's saves nothing would be there to resume or to find warm.
func TestReloadSavesConversations(t *testing.T) {
	key, udp, start := signedMcpd(t, "bed", 0x3c)
	state := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tr, err := device.DialUDP(udp)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	questions := []string{"Is the north bed dry?", "And the south bed?", "How much water?"}
	ask := func(c *device.Client, i int) *serialproto.Done {
		t.Helper()
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature),
			MaxTokens: 8, Prompt: questions[i]}
		d, err := c.Ask(ctx, m, func([]byte) error { return nil })
		if err != nil {
			t.Fatalf("turn %d: %v", i+1, err)
		}
		return d
	}
	files := []string{filepath.Join(state, ChatFileName), filepath.Join(state, WarmFileName)}

	p, _ := start(state, "--save-interval", "0s")
	c := device.New(tr, device.Config{DeviceID: "bed", Key: key, Resume: true, MaxData: 64, Window: 2})
	helloUntilReady(ctx, c)
	ask(c, 0)
	second := ask(c, 1)
	for _, f := range files {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s before the reload: %v (the test needs the reload to be the only save)", f, err)
		}
	}
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, "configuration reloaded", 60*time.Second)
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("after the reload: %v\n%s", err, p.logs.String())
		}
	}
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 30*time.Second)

	p, httpAddr := start(state)
	p.waitLog(t, "saved conversations loaded", 60*time.Second)
	third := ask(c, 2) // the same client: NO_SESSION, HELLO with RESUME, the question again
	cached := kvPromptCached(t, httpAddr)
	stopMcpd(t, p)
	if !c.Resumed() || third.PromptTokens <= second.PromptTokens {
		t.Fatalf("after a reload and SIGKILL: resumed %v, turn 3 had %d prompt tokens, turn 2 %d\n%s",
			c.Resumed(), third.PromptTokens, second.PromptTokens, p.logs.String())
	}
	if cached < int64(second.PromptTokens) {
		t.Fatalf("after a reload and SIGKILL: %d prompt tokens cached, turn 2's prompt had %d\n%s",
			cached, second.PromptTokens, p.logs.String())
	}
}
