package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/ollamatest"
	"github.com/mcpd-project/mcpd/internal/testmodel"
	"github.com/mcpd-project/mcpd/serialproto"
)

// A first install: the packaged configuration names a model that is not
// there yet (waiting.go).

// installModel puts the tiny model at path the way an operator should: a
// complete file renamed into place.
func installModel(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tiny := testmodel.Tiny(t, t.TempDir())
	data, err := os.ReadFile(tiny)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".part"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// askError asks and returns the daemon's ERROR, failing the test on
// anything else.
func askError(t *testing.T, c *device.Client) *serialproto.Error {
	t.Helper()
	text, done, err := askDevice(c, "Is anyone there?", 8, 10*time.Second)
	var e *serialproto.Error
	if !errors.As(err, &e) {
		t.Fatalf("ask without a model: %q, DONE %+v, %v; want an ERROR", text, done, err)
	}
	return e
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestFirstInstallWaitsForModel: with no model at the configured path mcpd
// starts anyway (READY=1; systemd would otherwise restart it forever),
// says what it waits for in STATUS=, /status and a STATUS reply, answers
// a device's INFER with MODEL_NOT_FOUND and what to do, stays waiting
// through a reload, and loads the model once the file appears — in the
// same process, the device's session intact. Once serving, a reload that
// finds the model gone is refused and the engine stays.
func TestFirstInstallWaitsForModel(t *testing.T) {
	bin := buildMcpd(t)
	notify := listenNotify(t)
	dir := t.TempDir()
	model := filepath.Join(dir, "models", "model.gguf") // the directory is missing too
	addr, httpAddr := "127.0.0.1:"+freePort(t), freeTCP(t)
	conf := filepath.Join(dir, "mcpd.toml")
	text := "listen_udp = [\"" + addr + "\"]\nmodel = \"" + model + "\"\n[engine]\nthreads = 1\n[http]\nlisten = \"" + httpAddr + "\"\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startMcpd(t, []string{bin, "--config", conf}, "NOTIFY_SOCKET="+notify.path)
	waiting := "waiting for a model at " + model + " (no such file or directory)"
	if ready := notify.next(t, "READY=1", 30*time.Second); !strings.Contains(ready, "STATUS="+waiting+"; 1 links") {
		t.Fatalf("READY status %q, want %q", ready, waiting)
	}

	c := connect(t, addr, "first")
	e := askError(t, c)
	// A device gets the first 64 bytes of the text: what to do, and where.
	want := "no model yet: install " + model + " (no such file or directory); mcpd loads it when it is there"
	cut, marked := strings.CutSuffix(e.Text, "…") // cut to fit, and said so
	if e.Code != serialproto.CodeModelNotFound || len(e.Text) < 60 || !marked || !strings.HasPrefix(want, cut) {
		t.Fatalf("ERROR %v %q, want MODEL_NOT_FOUND %q", e.Code, e.Text, want)
	}
	// A local application gets all of it.
	resp, err := http.Post("http://"+httpAddr+"/v1/generate", "application/json", strings.NewReader(`{"prompt":"Hi"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), want) {
		t.Fatalf("/v1/generate without a model: %d %s", resp.StatusCode, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := c.Status(ctx); err != nil || st.State != serialproto.StateUnavailable || st.Backend != "none" {
		t.Fatalf("STATUS reply %+v, %v; want UNAVAILABLE, backend none", st, err)
	}
	if code, body := httpGet(t, "http://"+httpAddr+"/status"); code != 200 || !strings.Contains(body, waiting) {
		t.Fatalf("/status %d: %s", code, body)
	}
	if code, body := httpGet(t, "http://"+httpAddr+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d while waiting for a model: %s", code, body)
	}

	// A reload while waiting keeps waiting (and keeps the session).
	p.signal(t, syscall.SIGHUP)
	notify.next(t, "RELOADING=1", 10*time.Second)
	if ready := notify.next(t, "READY=1", 10*time.Second); !strings.Contains(ready, waiting) {
		t.Fatalf("READY after a reload while waiting: %q", ready)
	}

	// The model appears: picked up by the poll, no signal, no restart.
	installModel(t, model)
	appeared := time.Now()
	if st := notify.next(t, "STATUS=serving: backend llama.cpp, model model.gguf", 15*time.Second); !strings.Contains(st, "1 sessions") {
		t.Fatalf("STATUS once the model is loaded: %q", st)
	}
	t.Logf("model file renamed into place → serving in %v (polled every %v)", time.Since(appeared).Round(time.Millisecond), modelPollInterval)
	if text, done, err := askDevice(c, "Which bed needs water?", 8, 30*time.Second); err != nil || done.Tokens != 8 || text == "" {
		t.Fatalf("ask in the same session once the model is there: %q %+v %v", text, done, err)
	}
	if code, body := httpGet(t, "http://"+httpAddr+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d once serving: %s", code, body)
	}

	// Serving: the model going away and a reload do not stop the engine.
	if err := os.Remove(model); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	notify.next(t, "RELOADING=1", 10*time.Second)
	if ready := notify.next(t, "READY=1", 10*time.Second); !strings.Contains(ready, "serving: backend llama.cpp") || !strings.Contains(ready, "no such file") {
		t.Fatalf("READY after a reload with the model gone: %q", ready)
	}
	p.waitLog(t, "reload rejected; the running configuration stays in force", 5*time.Second)
	if _, done, err := askDevice(c, "Still there?", 4, 30*time.Second); err != nil || done.Tokens != 4 {
		t.Fatalf("ask after the refused reload: %+v %v", done, err)
	}

	p.signal(t, syscall.SIGTERM)
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	kinds := []string{"READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"}
	if got := notify.kinds(); !slices.Equal(got, kinds) {
		t.Fatalf("notifications %q, want %q (one start, no restart)", got, kinds)
	}
}

// TestFirstInstallReloadLoadsModel: a reload pointing the configuration at
// a model that is there ends the wait at once.
func TestFirstInstallReloadLoadsModel(t *testing.T) {
	bin := buildMcpd(t)
	notify := listenNotify(t)
	dir := t.TempDir()
	addr := "127.0.0.1:" + freePort(t)
	conf := filepath.Join(dir, "mcpd.toml")
	base := "listen_udp = [\"" + addr + "\"]\n[engine]\nthreads = 1\n"
	writeConfig(t, conf, "model = \""+filepath.Join(dir, "absent.gguf")+"\"\n"+base)
	p := startMcpd(t, []string{bin, "--config", conf}, "NOTIFY_SOCKET="+notify.path)
	if ready := notify.next(t, "READY=1", 30*time.Second); !strings.Contains(ready, "waiting for a model at") {
		t.Fatalf("READY status %q", ready)
	}
	writeConfig(t, conf, "model = \""+tinyModel(t)+"\"\n"+base)
	p.signal(t, syscall.SIGHUP)
	notify.next(t, "RELOADING=1", 10*time.Second)
	if ready := notify.next(t, "READY=1", 30*time.Second); !strings.Contains(ready, "serving: backend llama.cpp, model tiny.gguf") {
		t.Fatalf("READY after the reload: %q", ready)
	}
	c := connect(t, addr, "reloaded")
	if _, done, err := askDevice(c, "Hello", 4, 30*time.Second); err != nil || done.Tokens != 4 {
		t.Fatalf("ask: %+v %v", done, err)
	}
}

// TestFirstInstallOllama: backend auto with an Ollama model and no GGUF
// file yet: Ollama answers the devices meanwhile; when the GGUF file
// appears the in-process engine joins, and on this CPU-only machine auto
// prefers it.
func TestFirstInstallOllama(t *testing.T) {
	srv, err := ollamatest.New(ollamatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	model := filepath.Join(dir, "model.gguf")
	conf := filepath.Join(dir, "mcpd.toml")
	if err := os.WriteFile(conf, []byte("backend = \"auto\"\nmodel = \""+model+"\"\n[engine]\nthreads = 1\n"+
		"[ollama]\nendpoints = [\""+srv.URL()+"\"]\nmodel = \"tiny\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + freePort(t)
	logs, stop := runMcpd(ctx, t, []string{"--config", conf, "--listen-udp", addr, "--http", "off"}, noEnv)
	defer stop()
	c, _ := dialCounting(t, addr, device.Config{DeviceID: "first-ollama", MaxData: 48, Window: 2})
	helloUntilReady(ctx, c)
	const prompt = "Which bed needs water?"
	ask := func() (string, error) {
		var got bytes.Buffer
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptNewChat), MaxTokens: 16, Prompt: prompt}
		_, err := c.Ask(ctx, m, func(b []byte) error { got.Write(b); return nil })
		return got.String(), err
	}
	if text, err := ask(); err != nil || text != strings.Join(ollamatest.DefaultTokens, "") {
		t.Fatalf("via Ollama without a GGUF file: %q, %v\n%s", text, err, logs.String())
	}
	if !strings.Contains(logs.String(), "no usable model for the in-process engine; Ollama serves until there is one") {
		t.Fatalf("the log does not say the in-process engine waits:\n%s", logs.String())
	}

	installModel(t, model)
	native := string(nativeAnswer(ctx, t, model, prompt, backends.Options{MaxTokens: 16, TemperatureSet: true}))
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Backend == "llama.cpp" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("STATUS %+v, %v: the in-process engine did not take over once its model appeared\n%s", st, err, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if text, err := ask(); err != nil || text != native {
		t.Fatalf("once the GGUF file is there: %q, %v; want the in-process answer %q", text, err, native)
	}
}

// TestCheckConfigWithoutModel: --check-config accepts a configuration
// whose model is not there yet, and says that mcpd will wait for it.
func TestCheckConfigWithoutModel(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "model.gguf")
	var out syncBuffer
	if err := run(context.Background(), []string{"--check-config", "--listen-udp", "127.0.0.1:0", "--model", missing}, noEnv, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "waiting for a model at "+missing+" (no such file or directory): mcpd starts anyway") {
		t.Fatalf("--check-config output:\n%s", out.String())
	}
}
