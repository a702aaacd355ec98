package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/ollamatest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// countingTransport counts the frames a device receives, by command and
// request seq.
type countingTransport struct {
	device.Transport
	mu sync.Mutex
	// errors are the distinct ERRORs by seq: a retransmission of a final
	// chunk (its ACK late or lost) is the same ERROR, a second outcome is
	// not.
	errors map[uint8]map[string]bool
}

func (c *countingTransport) Recv(deadline time.Time) (serialproto.Frame, error) {
	f, err := c.Transport.Recv(deadline)
	if err == nil && f.Cmd == serialproto.CmdError {
		c.mu.Lock()
		if c.errors[f.Seq] == nil {
			c.errors[f.Seq] = map[string]bool{}
		}
		c.errors[f.Seq][string(f.Data)] = true
		c.mu.Unlock()
	}
	return f, err
}

// dialCounting connects a device client to the daemon at addr over UDP
// through a countingTransport; the socket closes when the test ends.
func dialCounting(t *testing.T, addr string, cfg device.Config) (*device.Client, *countingTransport) {
	t.Helper()
	udp, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	tr := &countingTransport{Transport: udp, errors: map[uint8]map[string]bool{}}
	return device.New(tr, cfg), tr
}

func (c *countingTransport) totalErrors() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.errors {
		n += len(k)
	}
	return n
}

// TestEndToEndOllama runs the real daemon command with Ollama first and
// the in-process engine as fallback, and a device over UDP: Ollama's
// answer arrives as Ollama streamed it; a failure before the first token
// is invisible (the native engine answers); a cut after tokens gives the
// device those tokens and exactly one ERROR; with Ollama down STATUS says
// DEGRADED and names the engine in use.
func TestEndToEndOllama(t *testing.T) {
	model := tinyModel(t)
	srv, err := ollamatest.New(ollamatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const prompt = "Which bed needs water?"
	opts := backends.Options{MaxTokens: 16, TemperatureSet: true}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	native := string(nativeAnswer(ctx, t, model, prompt, opts))

	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	if err := os.WriteFile(conf, []byte(`backend = "ollama"
fallback = ["native"]
model = "`+model+`"
[engine]
threads = 1
[ollama]
endpoints = ["`+srv.URL()+`"]
model = "tiny"
keep_alive = "30m"
retries = -1
first_token_timeout = "500ms"
breaker_failures = 1
breaker_cooldown = "1h"
probe_interval = "100ms"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + freePort(t)
	logs, stop := runMcpd(ctx, t, []string{"--config", conf, "--listen-udp", addr, "--http", "off", "--log-level", "debug"}, noEnv)
	defer stop()
	c, _ := dialCounting(t, addr, device.Config{DeviceID: "e2e-ollama", MaxData: 48, Window: 2})
	helloUntilReady(ctx, c)
	ask := func() (string, *serialproto.Done, error) {
		var got bytes.Buffer
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptNewChat), MaxTokens: 16, Prompt: prompt}
		d, err := c.Ask(ctx, m, func(b []byte) error { got.Write(b); return nil })
		return got.String(), d, err
	}

	text, d, err := ask()
	ollamaAnswer := strings.Join(ollamatest.DefaultTokens, "")
	if err != nil || text != ollamaAnswer || d.Tokens != uint32(len(ollamatest.DefaultTokens)) || d.PromptTokens != 12 {
		t.Fatalf("via Ollama: %q, DONE %+v, %v; want %q\n%s", text, d, err, ollamaAnswer, logs.String())
	}
	if r := srv.Requests()[0]; r.KeepAlive == nil || r.KeepAlive.Duration != 30*time.Minute || r.Options["num_predict"] != float64(16) {
		t.Fatalf("Ollama saw %+v", r)
	}
	st, err := c.Status(ctx)
	if err != nil || st.State != serialproto.StateReady || st.Backend != "ollama" || st.Model != "tiny" {
		t.Fatalf("STATUS %+v, %v", st, err)
	}

	// Ollama stalls before its first token: the native engine answers and
	// the device cannot tell.
	srv.FailNext(ollamatest.StallBeforeFirst)
	text, d, err = ask()
	if err != nil || text != native || d.Tokens != 16 {
		t.Fatalf("failover: %q, DONE %+v, %v; want the native answer %q\n%s", text, d, err, native, logs.String())
	}

	// The breaker opened on that failure (threshold 1, no cool-down in this
	// test): STATUS shows the fallback serving, DEGRADED.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err = c.Status(ctx)
		if err == nil && st.State == serialproto.StateDegraded && st.Backend == "llama.cpp" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("STATUS %+v, %v; want DEGRADED on llama.cpp\n%s", st, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "backend selected") || !strings.Contains(logs.String(), "ollama unhealthy") {
		t.Fatalf("the new choice and its reason are not logged:\n%s", logs.String())
	}
}

// TestEndToEndOllamaCut: a stream cut after tokens reached the device ends
// in those tokens and exactly one ERROR, BACKEND_FAILED — never a DONE.
func TestEndToEndOllamaCut(t *testing.T) {
	srv, err := ollamatest.New(ollamatest.Config{CutAfter: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	addr := "127.0.0.1:" + freePort(t)
	env := map[string]string{"MCPD_OLLAMA_URL": srv.URL(), "MCPD_OLLAMA_MODEL": "tiny"}
	logs, stop := runMcpd(ctx, t, []string{"--backend", "ollama", "--listen-udp", addr, "--http", "off"}, func(k string) string { return env[k] })
	defer stop()
	c, tr := dialCounting(t, addr, device.Config{DeviceID: "e2e-cut", MaxData: 48, Window: 4})
	helloUntilReady(ctx, c)
	srv.FailNext(ollamatest.CutMidStream)
	var got bytes.Buffer
	d, err := c.Ask(ctx, &serialproto.Infer{Prompt: "hi"}, func(b []byte) error { got.Write(b); return nil })
	var e *serialproto.Error
	if !errors.As(err, &e) || e.Code != serialproto.CodeBackendFailed || d != nil {
		t.Fatalf("DONE %+v, err %v; want ERROR BACKEND_FAILED\n%s", d, err, logs.String())
	}
	if want := strings.Join(ollamatest.DefaultTokens[:3], ""); got.String() != want {
		t.Fatalf("device got %q, want the %q streamed before the cut", got.String(), want)
	}
	// One more exchange: a second ERROR for that request would arrive now.
	if _, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := tr.totalErrors(); n != 1 {
		t.Fatalf("%d distinct ERRORs for the request, want exactly 1", n)
	}
	// The next request is answered in full (a cut is not an outage).
	got.Reset()
	if _, err := c.Ask(ctx, &serialproto.Infer{Prompt: "again"}, func(b []byte) error { got.Write(b); return nil }); err != nil || got.String() != strings.Join(ollamatest.DefaultTokens, "") {
		t.Fatalf("%q, %v", got.String(), err)
	}
}

func TestBackendConfig(t *testing.T) {
	model := tinyModel(t)
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.toml")
	_ = os.WriteFile(typo, []byte("[ollama]\nmodel = \"m\"\nkeepalive = \"5m\"\n"), 0o644)
	good := filepath.Join(dir, "good.toml")
	_ = os.WriteFile(good, []byte("backend = \"ollama\"\nfallback = [\"native\"]\nmodel = \""+model+"\"\n"+
		"[ollama]\nendpoints = [\"http://127.0.0.1:1\", \"http://gpu-box.lan:11434\"]\nmodel = \"llama3.2:1b\"\nkeep_alive = \"-1s\"\n"+
		"connect_timeout = \"1s\"\nfirst_token_timeout = \"90s\"\ntoken_timeout = \"20s\"\ntotal_timeout = \"5m\"\nretries = -1\n"+
		"breaker_failures = 5\nbreaker_cooldown = \"30s\"\nprobe_interval = \"1m\"\nparallel = 2\n"+
		"[ollama.parallel_per_endpoint]\n\"http://gpu-box.lan:11434\" = 8\n"), 0o644)
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string // "" = valid
	}{
		{args: []string{"--backend", "ollama"}, want: "backend ollama: no model"},
		{args: []string{"--backend", "ollama", "--model", "llama3.2:1b"}},
		{args: []string{"--backend", "ollama", "--model", "llama3.2:1b", "--fallback", "native"}, want: "needs a GGUF file"},
		{args: []string{"--backend", "ollama", "--ollama-model", "llama3.2:1b", "--model", model, "--fallback", "native"}},
		{args: []string{"--model", model, "--fallback", "gpu"}, want: `fallback "gpu"`},
		{args: []string{"--model", model, "--fallback", "auto"}, want: `fallback "auto"`},
		{args: []string{"--ollama-model", "llama3.2:1b"}}, // auto, Ollama only
		{args: []string{"--ollama-model", "m", "--ollama-url", "ftp://x"}, want: "want http://host:port"},
		{args: []string{"--model", model, "--backend", "native", "--fallback", "ollama"}, want: "backend ollama: no model"},
		{args: []string{"--ollama-model", "m"}, env: map[string]string{"MCPD_OLLAMA_KEEP_ALIVE": "forever"}, want: "MCPD_OLLAMA_KEEP_ALIVE"},
		{args: []string{"--backend", "ollama"}, env: map[string]string{"MCPD_OLLAMA_MODEL": "m", "MCPD_OLLAMA_URL": "http://a:1,http://b:2", "MCPD_FALLBACK": "native", "MCPD_MODEL": model}},
		{args: []string{"--config", typo}, want: "unknown keys: ollama.keepalive"},
		{args: []string{"--config", good}},
	} {
		var out syncBuffer
		err := run(context.Background(), append([]string{"--check-config", "--listen-udp", "127.0.0.1:0"}, tc.args...),
			func(k string) string { return tc.env[k] }, &out, &out)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v %v: %v", tc.args, tc.env, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v %v: got %v, want an error containing %q", tc.args, tc.env, err, tc.want)
		}
	}
	// What the file and flags say reaches the engine's configuration.
	var cfg config = defaultConfig()
	if err := cfg.loadFile(good, true); err != nil {
		t.Fatal(err)
	}
	o := cfg.Ollama
	if o.KeepAlive == nil || o.KeepAlive.Duration != -time.Second || o.Retries != -1 || o.BreakerFailures != 5 ||
		o.FirstTokenTimeout.Duration != 90*time.Second || len(o.Endpoints) != 2 || cfg.ollamaModel() != "llama3.2:1b" || cfg.ggufPath() != model ||
		o.Parallel != 2 || o.ParallelPerEndpoint["http://gpu-box.lan:11434"] != 8 {
		t.Fatalf("%+v", cfg)
	}
}
