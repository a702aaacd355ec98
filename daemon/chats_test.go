package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon/chatstate"
	"github.com/mcpd-project/mcpd/serialproto"
)

// chatRun is one run of a daemon that keeps conversations in file, on a
// loopback UDP address (the same address again for a restart).
type chatRun struct {
	d    *Daemon
	e    *testEngine
	logs *logBuffer
	addr string
	stop func()
}

func startChatRun(t *testing.T, cfg Config, addr string) *chatRun {
	t.Helper()
	r := &chatRun{e: &testEngine{}, logs: &logBuffer{}}
	d, err := New(cfg, r.e, slog.New(slog.NewTextHandler(r.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var l *UDPLink
	for range 100 { // the last run's socket on addr is closed, but maybe not yet released
		if l, err = ListenUDP(addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	r.d, r.addr, r.stop = d, l.Addr().String(), runLinks(t, d, l)
	return r
}

// history is the messages before the prompt of the engine's last request.
func (r *chatRun) history() []string {
	reqs := r.e.requests()
	if len(reqs) == 0 {
		return nil
	}
	msgs := reqs[len(reqs)-1].Messages
	var out []string
	for _, m := range msgs[:len(msgs)-1] {
		out = append(out, m.Content)
	}
	return out
}

func chatConfig(t *testing.T) Config {
	return Config{ChatFile: filepath.Join(t.TempDir(), "chats.mcpdch"), ChatModel: "test-engine|tiny", Heartbeat: time.Second}
}

// TestResumeAfterRestart: a device that proves who it is and asks to
// resume finds its conversation after the daemon restarted — the same
// client, whose next Ask meets NO_SESSION, says HELLO with RESUME and
// asks again — and nobody else does: an unsigned device (its id is only a
// claim) unless policy trusts the network, a device with another key, a
// device that does not ask, a daemon serving another model.
func TestResumeAfterRestart(t *testing.T) {
	key, other := testKey(t, 1), testKey(t, 2)
	turns := []string{"one", "two"}
	earlier := []string{"one", answerFor("one"), "two", answerFor("two")}
	for _, tc := range []struct {
		name    string
		first   device.Config  // the device before the restart
		then    *device.Config // another device after it; nil: the same one
		trusted bool           // ResumeUnsigned in both runs
		edit    func(*Config)  // the second run's configuration
		resumed bool
	}{
		{name: "signed", first: device.Config{Key: key, Resume: true}, resumed: true},
		// (Not the same client: a signed device that does not resume
		// ignores the restarted daemon's unsigned NO_SESSION, §9.2.)
		{name: "signed, not asking", first: device.Config{Key: key}, then: &device.Config{Key: key}},
		{name: "unsigned", first: device.Config{Resume: true}},
		{name: "unsigned, trusted network", first: device.Config{Resume: true}, trusted: true, resumed: true},
		{name: "another key", first: device.Config{Key: key, Resume: true}, then: &device.Config{Key: other, Resume: true},
			edit: func(c *Config) { c.Keys = map[string]serialproto.Key{"dev": other} }},
		{name: "another model", first: device.Config{Key: key, Resume: true},
			edit: func(c *Config) { c.ChatModel = "test-engine|other" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := chatConfig(t)
			cfg.ResumeUnsigned = tc.trusted
			if !tc.first.Key.IsZero() {
				cfg.Keys = map[string]serialproto.Key{"dev": tc.first.Key}
			}
			run := startChatRun(t, cfg, "127.0.0.1:0")
			tc.first.DeviceID = "dev"
			c := dial(t, run.addr, tc.first)
			for _, p := range turns {
				if _, _, err := ask(t, c, p); err != nil {
					t.Fatal(err)
				}
			}
			run.stop()
			_, err := os.Stat(cfg.ChatFile)
			if saved, want := err == nil, !tc.first.Key.IsZero() || tc.trusted; saved != want {
				t.Fatalf("chat file saved %v (%v), want %v\n%s", saved, err, want, run.logs)
			}

			if tc.edit != nil {
				tc.edit(&cfg)
			}
			again := startChatRun(t, cfg, run.addr)
			next := c // the same device: NO_SESSION, then HELLO and its question again if it resumed
			if tc.then != nil {
				tc.then.DeviceID = "dev"
				next = dial(t, again.addr, *tc.then)
			}
			_, _, err = ask(t, next, "three")
			if tc.then == nil && !tc.resumed {
				// The Go device does not ask a prompt that continues a
				// conversation in a session that lost it.
				if !isNoSession(err) {
					t.Fatalf("a continued chat after the restart, not resumed: %v, want NO_SESSION", err)
				}
			} else if err != nil {
				t.Fatalf("after the restart: %v\n%s", err, again.logs)
			}
			if next.Resumed() != tc.resumed {
				t.Fatalf("Resumed %v, want %v\n%s", next.Resumed(), tc.resumed, again.logs)
			}
			if got := again.history(); tc.resumed && strings.Join(got, "|") != strings.Join(earlier, "|") {
				t.Fatalf("the engine saw %q before the prompt, want %q", got, earlier)
			} else if tc.resumed {
				// The answers' generated token ids came through the file.
				reqs := again.e.requests()
				for _, m := range reqs[len(reqs)-1].Messages {
					if m.Role == backends.RoleAssistant && len(m.Tokens) != len(strings.Fields(m.Content)) {
						t.Fatalf("answer %q resumed with tokens %v", m.Content, m.Tokens)
					}
				}
			} else if !tc.resumed && len(got) != 0 {
				t.Fatalf("not resumed, yet the engine saw %q", got)
			}
			if n := strings.Count(again.logs.String(), "saved conversations refused"); n != map[bool]int{true: 1}[tc.name == "another model"] {
				t.Fatalf("%d refusals logged\n%s", n, again.logs)
			}
		})
	}
}

func isNoSession(err error) bool {
	var e *serialproto.Error
	return errors.As(err, &e) && e.Code == serialproto.CodeNoSession
}

// TestResumeLostSession: within one run, a signed device's conversation
// outlives its session: a new HELLO with RESUME continues it — from the
// session it replaces, or kept after that one expired —, one without
// RESUME starts afresh and drops it, and NEW_CHAT empties it.
func TestResumeLostSession(t *testing.T) {
	key := testKey(t, 3)
	// Sessions expire after 3 × 200 ms of silence: a session ended while
	// a device waited would only be resumed (RESUME).
	cfg := Config{Keys: map[string]serialproto.Key{"dev": key}, Heartbeat: 200 * time.Millisecond}
	run := startChatRun(t, cfg, "127.0.0.1:0")
	c := dial(t, run.addr, device.Config{DeviceID: "dev", Key: key, Resume: true})
	hello := func(c *device.Client) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Hello(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mustAsk := func(c *device.Client, p string, opts ...func(*serialproto.Infer)) {
		t.Helper()
		if _, _, err := ask(t, c, p, opts...); err != nil {
			t.Fatal(err)
		}
	}
	mustAsk(c, "one")
	hello(c) // replaces the session on the same peer
	mustAsk(c, "two")
	if got := run.history(); !c.Resumed() || len(got) != 2 || got[0] != "one" {
		t.Fatalf("after a new HELLO with RESUME: resumed %v, history %q", c.Resumed(), got)
	}
	expired := func() {
		t.Helper()
		waitFor(t, func() bool { return len(run.d.sessions.all()) == 0 })
	}
	expired()
	fresh := dial(t, run.addr, device.Config{DeviceID: "dev", Key: key, Resume: true})
	mustAsk(fresh, "three")
	if got := run.history(); !fresh.Resumed() || len(got) != 4 || got[2] != "two" {
		t.Fatalf("after the session expired: resumed %v, history %q", fresh.Resumed(), got)
	}
	mustAsk(fresh, "four", func(m *serialproto.Infer) { m.Set = m.Set.With(serialproto.OptNewChat) })
	if got := run.history(); len(got) != 0 {
		t.Fatalf("NEW_CHAT: history %q", got)
	}
	expired() // "four" is kept
	plain := dial(t, run.addr, device.Config{DeviceID: "dev", Key: key})
	mustAsk(plain, "five")
	if got := run.history(); plain.Resumed() || len(got) != 0 {
		t.Fatalf("HELLO without RESUME: resumed %v, history %q", plain.Resumed(), got)
	}
	// The device started afresh: RESUME now continues that, never the
	// conversation before it.
	later := dial(t, run.addr, device.Config{DeviceID: "dev", Key: key, Resume: true})
	mustAsk(later, "six")
	if got := run.history(); !later.Resumed() || strings.Join(got, "|") != "five|"+answerFor("five") {
		t.Fatalf("RESUME after a fresh start: resumed %v, history %q", later.Resumed(), got)
	}
}

// TestChatFileRefused: a chat file that is damaged or foreign costs the
// devices their conversations and nothing else — one log line, and the
// daemon serves.
func TestChatFileRefused(t *testing.T) {
	good := func(t *testing.T, model string) []byte {
		var buf bytes.Buffer
		conv := chatstate.Conversation{Owner: "id:dev", DeviceID: "dev", LastUsed: time.Now(),
			Messages: []backends.Message{{Role: backends.RoleUser, Content: "one"}, {Role: backends.RoleAssistant, Content: "1"}}}
		if err := chatstate.Write(&buf, chatstate.Identity(model), []chatstate.Conversation{conv}); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	for _, tc := range []struct {
		name string
		file func(t *testing.T) []byte
		kept bool
	}{
		{"sound", func(t *testing.T) []byte { return good(t, "test-engine|tiny") }, true},
		{"truncated", func(t *testing.T) []byte { b := good(t, "test-engine|tiny"); return b[:len(b)-5] }, false},
		{"bit flip", func(t *testing.T) []byte { b := good(t, "test-engine|tiny"); b[80] ^= 4; return b }, false},
		{"wrong version", func(t *testing.T) []byte { b := good(t, "test-engine|tiny"); b[8] = 9; return b }, false},
		{"another model", func(t *testing.T) []byte { return good(t, "test-engine|big") }, false},
		{"garbage", func(t *testing.T) []byte { return bytes.Repeat([]byte{0xa5}, 4096) }, false},
		{"empty", func(t *testing.T) []byte { return nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := chatConfig(t)
			cfg.ResumeUnsigned = true
			if err := os.WriteFile(cfg.ChatFile, tc.file(t), 0o600); err != nil {
				t.Fatal(err)
			}
			run := startChatRun(t, cfg, "127.0.0.1:0")
			c := dial(t, run.addr, device.Config{DeviceID: "dev", Resume: true})
			if _, _, err := ask(t, c, "two"); err != nil {
				t.Fatal(err)
			}
			if c.Resumed() != tc.kept {
				t.Fatalf("resumed %v", c.Resumed())
			}
			if n := strings.Count(run.logs.String(), "saved conversations refused"); n != map[bool]int{false: 1}[tc.kept] {
				t.Fatalf("%d refusals logged:\n%s", n, run.logs)
			}
		})
	}
}

// TestPeriodicSave: with SaveInterval the conversations go to the file
// once an interval passed after a change (on the daemon's clock), not
// when nothing changed; a daemon started from that file — the first one
// never stopped, as after a crash — resumes them.
func TestPeriodicSave(t *testing.T) {
	key := testKey(t, 4)
	cfg := chatConfig(t)
	cfg.Keys = map[string]serialproto.Key{"dev": key}
	cfg.SaveInterval = time.Minute
	logs := &logBuffer{}
	clk := newFakeClock()
	d, err := newDaemon(cfg, &testEngine{}, slog.New(slog.NewTextHandler(logs, nil)), clk)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)
	c := dial(t, addr, device.Config{DeviceID: "dev", Key: key, Resume: true})
	if _, _, err := ask(t, c, "one"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(30 * time.Second)
	time.Sleep(20 * time.Millisecond)
	if _, err := os.Stat(cfg.ChatFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("saved before the interval passed: %v", err)
	}
	advanceUntil(t, clk, 10*time.Second, func() bool { return strings.Count(logs.String(), "conversations saved") == 1 })
	for range 3 { // nothing changed: nothing written
		clk.Advance(time.Minute)
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "conversations saved"); n != 1 {
		t.Fatalf("%d saves without a change:\n%s", n, logs)
	}

	crashed := startChatRun(t, cfg, "127.0.0.1:0") // the first daemon still runs: its file is all there is
	next := dial(t, crashed.addr, device.Config{DeviceID: "dev", Key: key, Resume: true})
	if _, _, err := ask(t, next, "two"); err != nil {
		t.Fatal(err)
	}
	if got := crashed.history(); !next.Resumed() || len(got) != 2 || got[0] != "one" {
		t.Fatalf("from the periodic save: resumed %v, history %q", next.Resumed(), got)
	}

	if _, _, err := ask(t, c, "again"); err != nil {
		t.Fatal(err)
	}
	advanceUntil(t, clk, 10*time.Second, func() bool { return strings.Count(logs.String(), "conversations saved") == 2 })
}

// TestResumeOnSerialPort: on a serial port the device of an id is the one
// at the end of the cable, so an unsigned device there resumes its
// conversation after the daemon restarted (a new daemon on the same port,
// the device rebooted: a new client saying HELLO with RESUME); another id
// on the same port does not get it.
func TestResumeOnSerialPort(t *testing.T) {
	master, path := openPty(t)
	cfg := chatConfig(t)
	sc, err := ParseSerial(path + ":115200")
	if err != nil {
		t.Fatal(err)
	}
	tr := device.NewStream(master)
	defer tr.Close()
	run := func() (*testEngine, func()) {
		e := &testEngine{}
		d, err := New(cfg, e, testLogger())
		if err != nil {
			t.Fatal(err)
		}
		return e, runLinks(t, d, NewSerialLink(sc, testLogger()))
	}
	hello := func(id string) *device.Client {
		t.Helper()
		c := device.New(tr, device.Config{DeviceID: id, MaxData: 64, Window: 2, RTO: 300 * time.Millisecond, Resume: true})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Hello(ctx); err != nil {
			t.Fatal(err)
		}
		return c
	}
	history := func(e *testEngine) []string {
		reqs := e.requests()
		msgs := reqs[len(reqs)-1].Messages
		var out []string
		for _, m := range msgs[:len(msgs)-1] {
			out = append(out, m.Content)
		}
		return out
	}
	_, stop := run()
	if _, _, err := ask(t, hello("uart-dev"), "one"); err != nil {
		t.Fatal(err)
	}
	stop()
	e, _ := run()
	c := hello("uart-dev")
	if _, _, err := ask(t, c, "two"); err != nil {
		t.Fatal(err)
	}
	if got := history(e); !c.Resumed() || strings.Join(got, "|") != "one|"+answerFor("one") {
		t.Fatalf("after the restart: resumed %v, history %q", c.Resumed(), got)
	}
	other := hello("uart-other")
	if _, _, err := ask(t, other, "three"); err != nil {
		t.Fatal(err)
	}
	if got := history(e); other.Resumed() || len(got) != 0 {
		t.Fatalf("another id on the port: resumed %v, history %q", other.Resumed(), got)
	}
}
