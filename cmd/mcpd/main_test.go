package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/testmodel"
	"github.com/mcpd-project/mcpd/serialproto"
)

// syncBuffer is a bytes.Buffer safe for the daemon's logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tinyModel(t *testing.T) string {
	t.Helper()
	return testmodel.Tiny(t, t.TempDir())
}

func TestBadInvocations(t *testing.T) {
	dir := t.TempDir()
	badTOML := filepath.Join(dir, "bad.toml")
	_ = os.WriteFile(badTOML, []byte("listen_udp = [\"127.0.0.1:0\"]\ncolour = \"blue\"\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--backend", "gpu-magic"}, `want auto, native or ollama`},
		{[]string{"--backend", "native"}, "needs a GGUF file"},
		{[]string{"--serial", "/dev/ttyS0:fast"}, "baud"},
		{[]string{"--config", badTOML}, `unknown keys: colour`},
		{[]string{"--config", filepath.Join(dir, "absent.toml")}, "no such file"},
		{[]string{"--log-level", "chatty"}, "log_level"},
		{[]string{"--log-format", "xml"}, `log_format "xml": want auto, logfmt or json`},
		{[]string{"stray"}, "unexpected argument"},
		{[]string{"--http", "nowhere"}, "listen address"},
	} {
		var out syncBuffer
		err := run(context.Background(), append([]string{"--listen-udp", "127.0.0.1:0"}, tc.args...), noEnv, &out, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestEndToEndNative runs the real daemon command with the real llama.cpp
// engine on a generated model: the text a device reassembles over UDP must
// equal, byte for byte, what the engine produces for the same greedy
// request called directly.
func TestEndToEndNative(t *testing.T) {
	model := tinyModel(t)
	const prompt = "Which bed needs water?"
	opts := backends.Options{MaxTokens: 32, TemperatureSet: true}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := bytes.NewBuffer(nativeAnswer(ctx, t, model, prompt, opts))
	if want.Len() == 0 {
		t.Fatal("the engine produced nothing")
	}

	addr := "127.0.0.1:" + freePort(t)
	httpAddr := freeTCP(t)
	logs, stop := runMcpd(ctx, t, []string{"--model", model, "--threads", "1", "--listen-udp", addr, "--http", httpAddr, "--log-level", "debug"}, noEnv)
	defer stop()

	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := device.New(tr, device.Config{DeviceID: "e2e", MaxData: 48, Window: 2})
	helloUntilReady(ctx, c) // the model may still be loading
	for i := range 2 {      // twice: greedy output is the same every time
		var got bytes.Buffer
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptNewChat), MaxTokens: 32, Prompt: prompt}
		d, err := c.Ask(ctx, m, func(b []byte) error { got.Write(b); return nil })
		if err != nil {
			t.Fatalf("ask %d: %v\n%s", i, err, logs.String())
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("ask %d: the device got %q, the engine produced %q", i, got.Bytes(), want.Bytes())
		}
		if d.Tokens != 32 || d.Reason != serialproto.StopLength {
			t.Fatalf("DONE %+v", d)
		}
	}

	// A local application gets the same answer over HTTP, through the
	// same daemon, and the metrics count all three requests' tokens.
	resp, err := http.Post("http://"+httpAddr+"/v1/generate", "application/json",
		strings.NewReader(`{"prompt":"`+prompt+`","max_tokens":32,"temperature":0}`))
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	sc := bufio.NewScanner(resp.Body)
	var last map[string]any
	for sc.Scan() {
		last = nil
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if s, ok := last["response"].(string); ok {
			got.WriteString(s)
		}
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || got.String() != want.String() || last["done"] != true {
		t.Fatalf("HTTP %d: got %q, want %q; last line %v", resp.StatusCode, got.String(), want.String(), last)
	}
	resp, err = http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `mcpd_tokens_generated_total{backend="llama.cpp"} 96`) {
		t.Fatalf("metrics:\n%s", metrics)
	}
	// max_concurrent is unset: it follows the engine's 8 batched sequences.
	resp, err = http.Get("http://" + httpAddr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var status struct {
		Daemon struct {
			MaxConcurrent int `json:"max_concurrent"`
		} `json:"daemon"`
	}
	err = json.NewDecoder(resp.Body).Decode(&status)
	resp.Body.Close()
	if err != nil || status.Daemon.MaxConcurrent != 8 {
		t.Fatalf("/status: max_concurrent %d (%v), want the engine's 8", status.Daemon.MaxConcurrent, err)
	}
}

// freeTCP is a loopback TCP address free a moment ago.
func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func noEnv(string) string { return "" }

// TestConfigPrecedence: file < environment < flags, checked with
// --check-config, which validates without starting anything.
func TestConfigPrecedence(t *testing.T) {
	model := tinyModel(t)
	path := filepath.Join(t.TempDir(), "mcpd.toml")
	conf := "listen_udp = [\"127.0.0.1:7701\"]\nbackend = \"native\"\nmodel = \"" + model + "\"\n" +
		"[limits]\nmax_concurrent = 3\nmax_queue = 5\nheartbeat = \"2s\"\nmin_rto = \"20ms\"\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"MCPD_MAX_QUEUE": "9", "MCPD_LISTEN_UDP": "127.0.0.1:7702,127.0.0.1:7703"}
	var out syncBuffer
	err := run(context.Background(), []string{"--config", path, "--check-config", "--max-concurrent", "4"},
		func(k string) string { return env[k] }, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"udp [127.0.0.1:7702 127.0.0.1:7703]", "max_concurrent = 4", "max_queue = 9", `heartbeat = "2s"`, `min_rto = "20ms"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--check-config output lacks %q:\n%s", want, out.String())
		}
	}
	// The shipped example configuration parses (with a model that exists).
	example := filepath.Join("mcpd.toml")
	if err := run(context.Background(), []string{"--config", example, "--check-config", "--model", model}, noEnv, &out, &out); err != nil {
		t.Fatalf("%s: %v", example, err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	addr, err := freeUDP()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func freeUDP() (string, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return strconv.Itoa(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// TestConfigKeys: device keys come from the [keys] table, are counted but
// never printed, and a bad one is reported by device, not by value.
func TestConfigKeys(t *testing.T) {
	model := tinyModel(t)
	dir := t.TempDir()
	secret := strings.Repeat("ab", 32)
	good := filepath.Join(dir, "good.toml")
	_ = os.WriteFile(good, []byte("model = \""+model+"\"\n[keys]\nesp32-kitchen = \""+secret+"\"\n"), 0o600)
	var out syncBuffer
	if err := run(context.Background(), []string{"--config", good, "--check-config"}, noEnv, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "1 device keys") || strings.Contains(out.String(), secret) {
		t.Fatalf("--check-config output: %s", out.String())
	}
	bad := filepath.Join(dir, "bad.toml")
	_ = os.WriteFile(bad, []byte("model = \""+model+"\"\n[keys]\nesp32-kitchen = \"abcd\"\n"), 0o600)
	err := run(context.Background(), []string{"--config", bad, "--check-config"}, noEnv, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "esp32-kitchen") || strings.Contains(err.Error(), "abcd") {
		t.Fatalf("a short key: %v", err)
	}
}

// --log-format json: every line mcpd writes is one JSON object with time,
// level and msg; logfmt: key=value lines. Run in-process waiting for a
// model that is not there (it starts anyway), then stopped.
func TestLogFormats(t *testing.T) {
	for _, tc := range []struct {
		format string
		check  func(line string) error
	}{
		{"json", func(line string) error {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				return err
			}
			for _, k := range []string{"time", "level", "msg"} {
				if _, ok := rec[k]; !ok {
					return errors.New("no " + k)
				}
			}
			return nil
		}},
		{"logfmt", func(line string) error {
			if !strings.HasPrefix(line, "time=") || !strings.Contains(line, " level=") || !strings.Contains(line, " msg=") {
				return errors.New("not logfmt")
			}
			return nil
		}},
	} {
		t.Run(tc.format, func(t *testing.T) {
			var out syncBuffer
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, []string{"--listen-udp", "127.0.0.1:0", "--http", "off", "--backend", "native",
					"--model", filepath.Join(t.TempDir(), "absent.gguf"), "--log-format", tc.format}, noEnv, &out, &out)
			}()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(out.String(), "mcpd ready") && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) < 3 || !strings.Contains(out.String(), "mcpd ready") {
				t.Fatalf("output:\n%s", out.String())
			}
			for _, l := range lines {
				if err := tc.check(l); err != nil {
					t.Errorf("%s line %q: %v", tc.format, l, err)
				}
			}
		})
	}
}
