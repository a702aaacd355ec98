// Package examples holds no code of its own: its test builds the example
// programs in the folders below and runs each against a real daemon in
// the test's process (daemon.New with an engine that echoes the prompt),
// on loopback UDP and on a pseudo-terminal cable, as they run against
// bin/mcpd.
package examples

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/mosquittotest"
	"github.com/mcpd-project/mcpd/internal/ptytest"
	"github.com/mcpd-project/mcpd/serialproto"
)

const keyHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

// echo answers with the prompt's words.
type echo struct{}

func (echo) Name() string { return "echo" }
func (echo) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	words := strings.SplitAfter(req.Messages[len(req.Messages)-1].Content, " ")
	for _, w := range words {
		if err := emit([]byte(w)); err != nil {
			return backends.Result{}, err
		}
	}
	return backends.Result{Tokens: len(words)}, nil
}
func (echo) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "echo"}, nil
}
func (echo) Healthy(context.Context) error { return nil }
func (echo) Close() error                  { return nil }

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// build compiles the examples once.
func build(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the examples with")
	}
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "mcpd-examples-"); buildErr != nil {
			return
		}
		out, err := exec.Command(gobin, "build", "-o", binDir+string(filepath.Separator), "./ask-udp", "./ask-serial", "./signed", "./lossy-link", "./ask-mqtt").CombinedOutput()
		if err != nil {
			buildErr = &buildError{err, out}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + string(e.out) }

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// startDaemon runs a daemon on loopback UDP and on the daemon's end of a
// pty cable; it returns the UDP address and the device's end of the cable.
func startDaemon(t *testing.T) (udp, port string) {
	t.Helper()
	key, err := hex.DecodeString(keyHex)
	if err != nil {
		t.Fatal(err)
	}
	k, err := serialproto.NewKey(key)
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(daemon.Config{Keys: map[string]serialproto.Key{"example-signed": k}}, echo{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A serial cable with a named terminal at each end, as socat makes.
	daemonEnd, deviceEnd := ptytest.Cable(t)
	sc, err := daemon.ParseSerial(daemonEnd + ":115200")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, l, daemon.NewSerialLink(sc, nil)); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("the daemon did not stop")
		}
	})
	return l.Addr().String(), deviceEnd
}

// run runs an example for at most 30 s and returns its stdout and stderr.
func run(t *testing.T, name string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(build(t), name), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func TestExamples(t *testing.T) {
	build(t)
	udp, port := startDaemon(t)
	const prompt = "Is bed 3 dry?"
	for _, tc := range []struct {
		name string
		args []string
		tail string // the last line on stdout
	}{
		{"ask-udp", []string{"-addr", udp, prompt}, "4 tokens, 13 bytes, CRC-32C"},
		{"ask-serial", []string{"-port", port, prompt}, "4 tokens over " + port + " at 115200 baud"},
		{"signed", []string{"-addr", udp, "-key", keyHex, prompt}, "4 tokens, signed both ways"},
		{"lossy-link", []string{"-addr", udp, "-loss", "0.2", "-seed", "3", prompt}, "4 tokens, CRC-32C"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := run(t, tc.name, tc.args...)
			if err != nil {
				t.Fatalf("%v\nstdout: %s\nstderr: %s", err, out, errOut)
			}
			if !strings.HasPrefix(out, prompt+"\n") || !strings.Contains(out, tc.tail) {
				t.Fatalf("stdout %q, want the prompt echoed and %q\nstderr: %s", out, tc.tail, errOut)
			}
			if tc.name == "lossy-link" && !regexp.MustCompile(`[1-9]\d* dropped`).MatchString(errOut) {
				t.Fatalf("the link lost nothing: %s", errOut)
			}
		})
	}
}

// TestSignedWrongKey: the daemon refuses a device with the wrong key, and
// the example says so and fails.
func TestSignedWrongKey(t *testing.T) {
	build(t)
	udp, _ := startDaemon(t)
	wrong := strings.Repeat("ab", 32)
	out, errOut, err := run(t, "signed", "-addr", udp, "-key", wrong, "hi")
	if err == nil || !strings.Contains(errOut, "refused this device's key") || !strings.Contains(errOut, "AUTH_FAILED") {
		t.Fatalf("want a refusal, got %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
}

// TestMQTTExample: ask-mqtt through a real mosquitto, with the device's
// own account; a wrong password fails with the broker's refusal.
func TestMQTTExample(t *testing.T) {
	build(t)
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"kitchen"}})
	d, err := daemon.New(daemon.Config{}, echo{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	link, err := daemon.NewMQTTLink(daemon.MQTTConfig{URL: b.URL, Username: mosquittotest.DaemonUser, Password: b.Password(mosquittotest.DaemonUser)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, link); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(10 * time.Second); !link.Connected(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not connect to the broker")
		}
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.pw"), filepath.Join(dir, "bad.pw")
	if err := os.WriteFile(good, []byte(b.Password("kitchen")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const prompt = "Is bed 3 dry?"
	out, errOut, err := run(t, "ask-mqtt", "-broker", b.URL, "-id", "kitchen", "-password-file", good, prompt)
	if err != nil || !strings.HasPrefix(out, prompt+"\n") || !strings.Contains(out, "4 tokens over MQTT") {
		t.Fatalf("%v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	_, errOut, err = run(t, "ask-mqtt", "-broker", b.URL, "-id", "kitchen", "-password-file", bad, prompt)
	if err == nil || (!strings.Contains(errOut, "not Authorized") && !strings.Contains(errOut, "bad user name or password")) {
		t.Fatalf("a wrong password: %v\nstderr: %s", err, errOut)
	}
}
