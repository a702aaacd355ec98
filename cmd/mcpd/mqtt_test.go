package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/mosquittotest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestConfigMQTT: [[mqtt]] entries with a password file, the --mqtt flags
// that replace them, and the mistakes --check-config reports; passwords
// never reach the output.
func TestConfigMQTT(t *testing.T) {
	model := tinyModel(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "mqtt.pw")
	if err := os.WriteFile(pw, []byte("s3cret-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("model = \""+model+"\"\n"+body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", "[[mqtt]]\nurl = \"tcp://127.0.0.1:1883\"\nusername = \"mcpd\"\npassword_file = \""+pw+"\"\ngroup = \"hall\"\n"+
		"[[mqtt]]\nurl = \"mqtt://127.0.0.1:1884\"\npassword = \"inline-pw\"\nqos = 1\n")
	for _, tc := range []struct {
		name string
		args []string
		want []string // in the output; an error when it starts with "error: "
	}{
		{"file", []string{"--config", good}, []string{"udp []", "mqtt [mqtt:127.0.0.1:1883/hall mqtt:127.0.0.1:1884]"}},
		{"flag replaces", []string{"--config", good, "--mqtt", "tcp://u:flag-pw@127.0.0.1:1999", "--mqtt-group", "g2"}, []string{"mqtt [mqtt:127.0.0.1:1999/g2]"}},
		{"group flag on the file's", []string{"--config", good, "--mqtt-group", "g3"}, []string{"mqtt [mqtt:127.0.0.1:1883/g3 mqtt:127.0.0.1:1884/g3]"}},
		{"with udp", []string{"--config", good, "--listen-udp", "127.0.0.1:7799"}, []string{"udp [127.0.0.1:7799]"}},
		{"bad qos", []string{"--config", write("qos.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\nqos = 2\n")}, []string{"error: qos 2"}},
		{"both passwords", []string{"--config", write("both.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\npassword = \"x\"\npassword_file = \""+pw+"\"\n")}, []string{"error: both set"}},
		{"missing password file", []string{"--config", write("nofile.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\npassword_file = \"/nonexistent/pw\"\n")}, []string{"error: password_file"}},
		{"bad url", []string{"--mqtt", "http://h:1"}, []string{"error: scheme"}},
		{"bad group", []string{"--mqtt", "tcp://h:1", "--mqtt-group", "a/b"}, []string{"error: group"}},
		{"unknown key", []string{"--config", write("typo.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\nqso = 1\n")}, []string{"error: unknown keys: mqtt.qso"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuffer
			err := run(context.Background(), append(tc.args, "--check-config", "--model", model), noEnv, &out, &out)
			for _, w := range tc.want {
				if msg, isErr := strings.CutPrefix(w, "error: "); isErr {
					if err == nil || !strings.Contains(err.Error(), msg) {
						t.Fatalf("got %v, want an error with %q", err, msg)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(out.String(), w) {
					t.Fatalf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, secret := range []string{"s3cret-pw", "inline-pw", "flag-pw"} {
				if strings.Contains(out.String(), secret) || (err != nil && strings.Contains(err.Error(), secret)) {
					t.Fatalf("a password reached the output: %s %v", out.String(), err)
				}
			}
		})
	}
}

// TestMQTTScaleOutKillOne: two real mcpd processes in one group behind a
// real mosquitto share six devices that ask in a loop. One instance is
// killed (SIGKILL: no goodbye to the broker or the devices) while requests
// are in flight. Every request a device made ends exactly once, in DONE
// with the whole answer or in an error (for those the dead instance held);
// the devices re-HELLO, the survivor takes them, and every request after
// the kill is answered by it. The log shows how requests were spread.
func TestMQTTScaleOutKillOne(t *testing.T) {
	devices := []string{"dev-0", "dev-1", "dev-2", "dev-3", "dev-4", "dev-5"}
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: devices})
	bin := buildMcpd(t)
	model := tinyModel(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "mqtt.pw")
	if err := os.WriteFile(pw, []byte(b.Password(mosquittotest.DaemonUser)), 0o600); err != nil {
		t.Fatal(err)
	}
	procs := map[string]*mcpdProcess{}
	for _, inst := range []string{"mcpd-a", "mcpd-b"} {
		conf := filepath.Join(dir, inst+".toml")
		writeConfig(t, conf, "model = \""+model+"\"\n[engine]\nthreads = 1\n[limits]\nheartbeat = \"1s\"\n"+
			"[[mqtt]]\nurl = \""+b.URL+"\"\nusername = \"mcpd\"\npassword_file = \""+pw+"\"\ngroup = \"hall\"\ninstance = \""+inst+"\"\n")
		procs[inst] = startMcpd(t, []string{bin, "--config", conf})
	}
	for _, p := range procs {
		p.waitLog(t, "mqtt connected", 60*time.Second)
	}

	type outcome struct {
		instance string
		done     bool
		err      error
		after    bool // asked after the kill was seen
		held     bool // asked before the kill, ended after it
	}
	var (
		mu      sync.Mutex
		results = map[string][]outcome{}
		killed  atomic.Bool
		killAt  time.Time
		back    = map[string]time.Duration{} // device → from the kill to its first answer after it
	)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, id := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr, err := device.DialMQTT(ctx, device.MQTTConfig{URL: b.URL, DeviceID: id, Username: id, Password: b.Password(id)})
			if err != nil {
				t.Error(err)
				return
			}
			defer tr.Close()
			c := device.New(tr, device.Config{DeviceID: id, MaxData: 128, Window: 4, RTO: 100 * time.Millisecond, Retries: 4})
			hello := func() error {
				for ctx.Err() == nil {
					hctx, hcancel := context.WithTimeout(ctx, 3*time.Second)
					err := c.Hello(hctx)
					hcancel()
					if err == nil {
						return nil
					}
				}
				return ctx.Err()
			}
			if err := hello(); err != nil {
				t.Errorf("%s: HELLO: %v", id, err)
				return
			}
			for i := 0; i < 40 && ctx.Err() == nil; i++ {
				before := !killed.Load()
				inst := tr.Instance()
				text, done, err := askNewChat(c, fmt.Sprintf("%s question %d", id, i), 24, 20*time.Second)
				if err == nil {
					// The instance that answered: a request sent to mcpd-a
					// and refused NO_SESSION before it was accepted is
					// asked again on mcpd-b after a new HELLO, inside Ask
					// (protocol.md §10).
					inst = tr.Instance()
				}
				// after: asked after the kill; held: in flight across it.
				o := outcome{instance: inst, done: err == nil, err: err, after: !before, held: before && killed.Load()}
				if err == nil && (done == nil || text == "" || done.Tokens == 0) {
					o.err = fmt.Errorf("DONE without an answer: %q %+v", text, done)
				}
				mu.Lock()
				results[id] = append(results[id], o)
				if _, seen := back[id]; o.after && o.done && !seen {
					back[id] = time.Since(killAt)
				}
				mu.Unlock()
				if err != nil {
					if err := hello(); err != nil {
						t.Errorf("%s: re-HELLO: %v", id, err)
						return
					}
				}
			}
		}()
	}

	// Kill mcpd-a once both have answered a few requests.
	waitUntil := func(cond func() bool) {
		deadline := time.Now().Add(60 * time.Second)
		for !cond() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	count := func(inst string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, rs := range results {
			for _, r := range rs {
				if r.instance == inst && r.done {
					n++
				}
			}
		}
		return n
	}
	waitUntil(func() bool { return count("mcpd-a") >= 10 && count("mcpd-b") >= 10 })
	mu.Lock()
	killAt = time.Now()
	mu.Unlock()
	if err := procs["mcpd-a"].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed.Store(true)
	wg.Wait()

	perInstance := map[string][2]int{} // done, errors; asked before the kill
	var afterDone, afterErr, failedOnA, total int
	for id, rs := range results {
		for _, r := range rs {
			total++
			switch {
			case r.done && r.err != nil:
				t.Errorf("%s: a request ended twice: %v", id, r.err)
			case !r.after:
				c := perInstance[r.instance]
				if r.done {
					c[0]++
				} else {
					c[1]++
				}
				perInstance[r.instance] = c
				if !r.done && r.instance == "mcpd-a" && !r.held {
					failedOnA++
				}
				// The survivor shares the dead instance's topics once the
				// broker publishes its will: a request caught by the kill
				// ends in NO_SESSION from mcpd-b, not in the device's own
				// timeout.
				var perr *serialproto.Error
				if !r.done && r.held && (!errors.As(r.err, &perr) || perr.Code != serialproto.CodeNoSession) {
					t.Errorf("%s: a request caught by the kill ended in %v, want NO_SESSION", id, r.err)
				}
			case r.done:
				afterDone++
				if r.instance == "mcpd-a" {
					t.Errorf("%s: answered by the dead instance", id)
				}
			default:
				afterErr++
				if r.instance != "mcpd-a" {
					t.Errorf("%s: failed on the survivor %s: %v", id, r.instance, r.err)
				}
			}
		}
		if len(rs) != 40 {
			t.Errorf("%s: %d requests ended, want 40", id, len(rs))
		}
	}
	t.Logf("asked before the kill: mcpd-a %d done / %d errors (in flight at the kill), mcpd-b %d done / %d errors; asked after: %d done (all on mcpd-b), %d errors (sent to mcpd-a before the device noticed); %d requests",
		perInstance["mcpd-a"][0], perInstance["mcpd-a"][1], perInstance["mcpd-b"][0], perInstance["mcpd-b"][1], afterDone, afterErr, total)
	var slowest time.Duration
	for _, d := range back {
		slowest = max(slowest, d)
	}
	t.Logf("every device answered on mcpd-b within %v of the kill", slowest.Round(time.Millisecond))
	procs["mcpd-b"].waitLog(t, "instance gone", time.Second)
	if perInstance["mcpd-b"][1] > 0 {
		t.Errorf("requests failed on the survivor before the kill: %d", perInstance["mcpd-b"][1])
	}
	if failedOnA > 0 {
		t.Errorf("%d requests on mcpd-a failed before it was killed", failedOnA)
	}
	if afterDone == 0 {
		t.Error("no request was answered after the kill")
	}
	var survivorAfter int
	for _, rs := range results {
		if r := rs[len(rs)-1]; r.done && r.instance == "mcpd-b" {
			survivorAfter++
		}
	}
	if survivorAfter != len(devices) {
		t.Errorf("%d of %d devices ended on the survivor", survivorAfter, len(devices))
	}
}

// askNewChat asks with NEW_CHAT: each request stands alone, so a long run
// does not fill the context with the chat's history.
func askNewChat(c *device.Client, prompt string, maxTokens uint16, timeout time.Duration) (string, *serialproto.Done, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptNewChat),
		MaxTokens: maxTokens, Prompt: prompt}
	var text strings.Builder
	done, err := c.Ask(ctx, m, func(b []byte) error { text.Write(b); return nil })
	return text.String(), done, err
}
