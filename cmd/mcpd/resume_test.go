package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestResumeAfterRestartSIGTERM: a signed device's conversation survives
// mcpd's restarts with the real binary and llama.cpp over loopback UDP.
// The same device client talks to a reference mcpd that never stops, then
// to one that is stopped with SIGTERM after two turns and started again on
// the same address: its third turn (NO_SESSION, HELLO with RESUME, the
// question again) gives the reference's greedy answer with the same prompt
// tokens — the model saw the earlier turns — most of them from the warm
// file. Then a fourth turn saved by --save-interval survives SIGKILL
// while the warm file is not saved periodically (--warm-save-interval 0s):
// the turn after the crash is resumed with the earlier turns the stale
// warm file holds cached (the engine reuses by common token prefix).
func TestResumeAfterRestartSIGTERM(t *testing.T) {
	key, udp, start := signedMcpd(t, "greenhouse", 0x5a)
	stop := func(p *mcpdProcess) { stopMcpd(t, p) }
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tr, err := device.DialUDP(udp)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	type answer struct {
		text string
		done *serialproto.Done
	}
	questions := []string{"Which bed needs water?", "And the east bed?", "How much water?", "When?"}
	ask := func(c *device.Client, i int) answer {
		t.Helper()
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptSystem),
			MaxTokens: 12, System: "You are a greenhouse controller. Answer briefly.", Prompt: questions[i]}
		var got strings.Builder
		d, err := c.Ask(ctx, m, func(b []byte) error { got.WriteString(string(b)); return nil })
		if err != nil {
			t.Fatalf("turn %d: %v", i+1, err)
		}
		return answer{got.String(), d}
	}
	cached := func(httpAddr string) int64 { return kvPromptCached(t, httpAddr) }
	newDevice := func() *device.Client {
		c := device.New(tr, device.Config{DeviceID: "greenhouse", Key: key, Resume: true, MaxData: 64, Window: 2})
		helloUntilReady(ctx, c)
		return c
	}

	// The reference: four turns, never stopped.
	ref, _ := start(t.TempDir(), "--no-warm")
	c := newDevice()
	var want []answer
	for i := range questions {
		want = append(want, ask(c, i))
	}
	stop(ref)

	state := t.TempDir()
	p, _ := start(state)
	c = newDevice()
	for i := range 2 {
		if got := ask(c, i); got.text != want[i].text {
			t.Fatalf("turn %d: %q, the reference %q", i+1, got.text, want[i].text)
		}
	}
	stop(p)
	for _, line := range []string{"conversations saved", "warm cache saved"} {
		if !strings.Contains(p.logs.String(), line) {
			t.Fatalf("no %q line at SIGTERM:\n%s", line, p.logs.String())
		}
	}

	p, httpAddr := start(state, "--save-interval", "1s", "--warm-save-interval", "0s")
	p.waitLog(t, "saved conversations loaded", 60*time.Second)
	got := ask(c, 2) // the same client: NO_SESSION, HELLO with RESUME, the question again
	if !c.Resumed() || got.text != want[2].text || got.done.PromptTokens != want[2].done.PromptTokens {
		t.Fatalf("third turn after SIGTERM: resumed %v, %q with %d prompt tokens; the reference %q with %d\n%s",
			c.Resumed(), got.text, got.done.PromptTokens, want[2].text, want[2].done.PromptTokens, p.logs.String())
	}
	if n := cached(httpAddr); n < int64(want[1].done.PromptTokens) {
		t.Fatalf("third turn after SIGTERM: %d prompt tokens cached, the second turn's prompt had %d\n%s",
			n, want[1].done.PromptTokens, p.logs.String())
	}
	t.Logf("turn 3: time to first token %d ms resumed (%d of %d prompt tokens cached), %d ms in the run that never stopped",
		got.done.TTFTMS, cached(httpAddr), got.done.PromptTokens, want[2].done.TTFTMS)

	// The fourth turn's conversation reaches the disk within the interval,
	// the warm file stays as the SIGTERM after turn 2 wrote it; a crash.
	saves := func() (int, int) {
		return strings.Count(p.logs.String(), "conversations saved"), strings.Count(p.logs.String(), "warm cache saved")
	}
	chats, warm := saves()
	got = ask(c, 3)
	if got.text != want[3].text {
		t.Fatalf("turn 4: %q, the reference %q", got.text, want[3].text)
	}
	time.Sleep(3 * time.Second) // the turn changed both: the next tick writes the conversations
	if c2, w2 := saves(); c2 == chats || w2 != warm {
		t.Fatalf("after the fourth turn: %d→%d conversations saved, %d→%d warm (want the conversations only):\n%s",
			chats, c2, warm, w2, p.logs.String())
	}
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 30*time.Second)

	p, httpAddr = start(state)
	p.waitLog(t, "saved conversations loaded", 60*time.Second)
	questions = append(questions, "Thank you.")
	got = ask(c, 4)
	n := cached(httpAddr)
	stop(p)
	// The stale file holds turn 2 (its prompt and answer): turn 5's prompt
	// starts with them; turns 3 and 4 are evaluated again.
	if !c.Resumed() || got.done.PromptTokens <= want[3].done.PromptTokens ||
		n < int64(want[1].done.PromptTokens) || n >= int64(want[3].done.PromptTokens) {
		t.Fatalf("after SIGKILL: resumed %v, %d prompt tokens (turn 4 had %d), %d cached (want turn 2's %d to turn 4's %d)\n%s",
			c.Resumed(), got.done.PromptTokens, want[3].done.PromptTokens, n, want[1].done.PromptTokens,
			want[3].done.PromptTokens, p.logs.String())
	}
	t.Logf("after SIGKILL with the warm file of turn 2: %d of %d prompt tokens cached", n, got.done.PromptTokens)
}

// signedMcpd is the rig of the tests that restart mcpd under a signed
// device: the real binary on the tiny model, a configuration that gives
// device id a key of 32 bytes of fill, and one loopback UDP address for
// all its runs. start runs mcpd with STATE_DIRECTORY=state and args, and
// returns it with its HTTP address.
func signedMcpd(t *testing.T, id string, fill byte) (key serialproto.Key, udp string,
	start func(state string, args ...string) (*mcpdProcess, string)) {
	t.Helper()
	bin := buildMcpd(t)
	model := tinyModel(t)
	keyBytes := bytes.Repeat([]byte{fill}, 32)
	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	if err := os.WriteFile(conf, []byte("[keys]\n"+id+" = \""+hex.EncodeToString(keyBytes)+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := serialproto.NewKey(keyBytes)
	if err != nil {
		t.Fatal(err)
	}
	udp = "127.0.0.1:" + freePort(t)
	start = func(state string, args ...string) (*mcpdProcess, string) {
		httpAddr := freeTCP(t)
		p := startMcpd(t, append([]string{bin, "--config", conf, "--model", model, "--threads", "1", "--listen-udp", udp,
			"--http", httpAddr}, args...), "STATE_DIRECTORY="+state)
		return p, httpAddr
	}
	return key, udp, start
}
