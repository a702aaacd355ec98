package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/mosquittotest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestResumeOverMQTT: behind a broker the owner of a conversation is the
// device id the broker authenticated on that link (chatOwner: only that
// account may publish on the device's topic, the broker's ACL), so an
// unsigned device over a real mosquitto resumes its conversation after the
// daemon restarted — the same client, whose next Ask meets NO_SESSION,
// says HELLO with RESUME and asks again — and no other account gets it:
// not dev-b's account naming dev-a in its HELLO (FORBIDDEN), not dev-b
// asking to resume its own. Those ask first, so the conversation they do
// not get is there to be had: dev-a gets it after them.
func TestResumeOverMQTT(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-a", "dev-b"}})
	cfg := chatConfig(t)
	run := func() (*testEngine, *logBuffer, func()) {
		t.Helper()
		e, logs := &testEngine{}, &logBuffer{}
		d, err := New(cfg, e, slogTo(logs))
		if err != nil {
			t.Fatal(err)
		}
		_, _, stop := startMQTTDaemon(t, d, daemonMQTT(b), true)
		return e, logs, stop
	}
	// The messages before the prompt of e's last request.
	history := func(e *testEngine) []string { return (&chatRun{e: e}).history() }

	_, logs, stop := run()
	c := helloOver(t, dialMQTT(t, b, "dev-a"), device.Config{DeviceID: "dev-a", Resume: true})
	for _, p := range []string{"one", "two"} {
		if _, _, err := ask(t, c, p); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	if _, err := os.Stat(cfg.ChatFile); err != nil {
		t.Fatalf("no chat file after the stop (the MQTT device's conversation was not kept): %v\n%s", err, logs)
	}

	e, logs, _ := run()
	trB := dialMQTT(t, b, "dev-b")
	impostor := device.New(trB, device.Config{DeviceID: "dev-a", Resume: true, Retries: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var perr *serialproto.Error
	if err := impostor.Hello(ctx); !errors.As(err, &perr) || perr.Code != serialproto.CodeForbidden {
		t.Fatalf("HELLO as dev-a with RESUME on dev-b's account: %v, want FORBIDDEN", err)
	}
	other := helloOver(t, trB, device.Config{DeviceID: "dev-b", Resume: true})
	if _, _, err := ask(t, other, "three"); err != nil {
		t.Fatal(err)
	}
	if got := history(e); other.Resumed() || len(got) != 0 {
		t.Fatalf("dev-b's account: resumed %v, the engine saw %q before the prompt\n%s", other.Resumed(), got, logs)
	}

	if _, _, err := ask(t, c, "three"); err != nil {
		t.Fatalf("dev-a after the restart: %v\n%s", err, logs)
	}
	want := []string{"one", answerFor("one"), "two", answerFor("two")}
	if got := history(e); !c.Resumed() || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("dev-a after the restart: resumed %v, the engine saw %q before the prompt, want %q\n%s", c.Resumed(), got, want, logs)
	}
}
