// Package e2e runs the C device library against the real mcpd: a C program
// (clients/c/examples/posix/mcpf_ask.c, built here with gcc) asks a
// question over UDP and over a pseudo-terminal, unsigned and signed, with
// llama.cpp on a generated model, and its reassembled answer must equal,
// byte for byte, what the Go device client gets for the same greedy,
// seeded request. The Go test lives in this directory without C files
// because a Go package directory may hold .c files only with cgo.
package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/mcpd-project/mcpd/backends/grammar"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/impair"
	"github.com/mcpd-project/mcpd/internal/testmodel"
	"github.com/mcpd-project/mcpd/serialproto"
)

// fanSchema is schema 1 of the test's mcpd.toml: its longest answer
// ({"fan":0,"on":false}, 20 bytes) fits the maxTokens every run asks for.
const fanSchema = `{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3},"on":{"type":"boolean"}}}`

const (
	prompt    = "Which bed needs water?"
	maxTokens = 24
	seed      = 42
	signedID  = "c-signed"
	// toolMaxTokens leaves the random model room for a whole call
	// (<call>"set_relay",{"on":false}</call>, byte by byte) and more.
	toolMaxTokens = 128
)

var key = bytes.Repeat([]byte{0x5a, 0xc3}, 16)

// build compiles the C device program (sign: with MCPF_SIGN) with the
// flags the library promises to be clean under.
func build(t *testing.T, dir string, sign bool) string {
	t.Helper()
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to build the C device: %v", err)
	}
	out := filepath.Join(dir, fmt.Sprintf("mcpf_ask_sign%v", sign))
	src, err := filepath.Glob("../src/*.c")
	if err != nil || len(src) == 0 {
		t.Fatalf("C sources: %v", err)
	}
	args := append([]string{"-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1",
		fmt.Sprintf("-DMCPF_SIGN=%d", map[bool]int{false: 0, true: 1}[sign]),
		"-I../include", "-o", out, "../examples/posix/mcpf_ask.c"}, src...)
	if b, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}

// buildESP32UDP compiles the ESP32 UDP example against the host shim of
// ESP-IDF (tests/esp_udp_shim), aimed at host:port.
func buildESP32UDP(t *testing.T, dir, host, port string) string {
	t.Helper()
	src, err := filepath.Glob("../src/*.c")
	if err != nil || len(src) == 0 {
		t.Fatalf("C sources: %v", err)
	}
	out := filepath.Join(dir, "esp32_udp")
	args := append([]string{"-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-D_POSIX_C_SOURCE=200809L",
		"-DMCPD_HOST=\"" + host + "\"", "-DMCPD_PORT=" + port, "-I../include", "-I../tests/esp_udp_shim", "-o", out,
		"../examples/esp32_udp/mcpd_udp.c", "../tests/esp_udp_shim/shim.c"}, src...)
	if b, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}

// buildMcpd builds the daemon command; the cgo flags come from the
// environment (the Makefile exports them) and -race follows the test's own
// build, so the llama.cpp objects `go test` compiled are reused from the
// build cache rather than compiled again.
func buildMcpd(t *testing.T, dir string) string {
	t.Helper()
	gotool := filepath.Join(runtime.GOROOT(), "bin", "go")
	out := filepath.Join(dir, "mcpd")
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command(gotool, append(args, "github.com/mcpd-project/mcpd/cmd/mcpd")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build mcpd: %v\n%s", err, b)
	}
	return out
}

func freeUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

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

// goAnswer asks the same question through the Go device client.
func goAnswer(ctx context.Context, t *testing.T, tr device.Transport, cfg device.Config) string {
	t.Helper()
	c := device.New(tr, cfg)
	for {
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Hello(hctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("Go device: mcpd did not answer HELLO: %v", err)
		}
	}
	m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptSeed),
		MaxTokens: maxTokens, Temperature: 0, Seed: seed, Prompt: prompt}
	var text bytes.Buffer
	if _, err := c.Ask(ctx, m, func(b []byte) error { text.Write(b); return nil }); err != nil {
		t.Fatalf("Go device: %v", err)
	}
	return text.String()
}

// goToolAnswer asks with TOOLS_ON through the Go device client, with the
// tools of examples/posix/mcpf_ask.c (the same descriptions and schema,
// handlers that answer as its do for --soil 41). It returns each call as
// "name status result", the answer, and the ERROR code (0 for DONE).
func goToolAnswer(ctx context.Context, t *testing.T, tr device.Transport) ([]string, string, int) {
	t.Helper()
	var calls []string
	record := func(name, result string, err error) (string, error) {
		if err != nil {
			calls = append(calls, name+" FAILED "+err.Error())
		} else {
			calls = append(calls, name+" OK "+result)
		}
		return result, err
	}
	tools := []device.Tool{
		{Name: "read_soil", Description: "Reads the soil moisture sensor of the bed; answers the moisture in percent.",
			Handler: func(context.Context, []byte) (string, error) { return record("read_soil", "41", nil) }},
		{Name: "set_relay", Description: "Switches the pump relay of the bed on or off.",
			Schema: `{"type":"object","properties":{"on":{"type":"boolean"}}}`,
			Handler: func(_ context.Context, args []byte) (string, error) {
				var a struct{ On *bool }
				if json.Unmarshal(args, &a) != nil || a.On == nil {
					return record("set_relay", "", errors.New("on must be true or false"))
				}
				return record("set_relay", map[bool]string{true: "relay on", false: "relay off"}[*a.On], nil)
			}},
	}
	c := device.New(tr, device.Config{DeviceID: "go-tools", MaxData: 64, Window: 2})
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Hello(hctx); err != nil {
		t.Fatalf("Go device: %v", err)
	}
	if err := c.DeclareTools(hctx, tools); err != nil {
		t.Fatalf("Go device: TOOLS: %v", err)
	}
	m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).
		With(serialproto.OptSeed).With(serialproto.OptToolsOn), MaxTokens: toolMaxTokens, Temperature: 0, Seed: seed, Prompt: prompt}
	var text bytes.Buffer
	_, err := c.Ask(ctx, m, func(b []byte) error { text.Write(b); return nil })
	var e *serialproto.Error
	switch {
	case errors.As(err, &e):
		t.Logf("Go device: calls %q, ERROR %d", calls, e.Code)
		return calls, text.String(), int(e.Code)
	case err != nil:
		t.Fatalf("Go device: %v", err)
	}
	t.Logf("Go device: calls %q, answer %q", calls, text.String())
	return calls, text.String(), 0
}

// runC runs the C device and returns what it printed as the answer, and
// its statistics (stderr).
func runC(ctx context.Context, bin string, extra []*os.File, args ...string) (string, string, error) {
	args = append(args, "--max-tokens", fmt.Sprint(maxTokens), "--seed", fmt.Sprint(seed), "--temperature", "0", prompt)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.ExtraFiles = extra
	err := cmd.Run()
	return strings.TrimSuffix(stdout.String(), "\n"), stderr.String(), err
}

// askImpaired asks over an impaired link, up to 3 attempts: each must end
// in the exact answer or in the C device refusing a corrupted one.
func askImpaired(ctx context.Context, t *testing.T, bin string, args []string, want string, run int) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		got, stderr, err := runC(ctx, bin, nil, args...)
		if err == nil {
			if got != want {
				t.Fatalf("C device returned a wrong answer as right:\n got %q\nwant %q\n%s", got, want, stderr)
			}
			t.Logf("run %d, attempt %d: %s", run, attempt, strings.TrimSpace(stderr))
			return
		}
		if !strings.Contains(stderr, "checksum") || attempt == 3 {
			t.Fatalf("C device: %v\n%s", err, stderr)
		}
		t.Logf("run %d, attempt %d: corruption caught by the CRC-32C: %s", run, attempt, strings.TrimSpace(stderr))
	}
}

// cAnswer runs the C device on a clean link: it must succeed.
func cAnswer(ctx context.Context, t *testing.T, bin string, extra []*os.File, args ...string) string {
	t.Helper()
	out, stderr, err := runC(ctx, bin, extra, args...)
	if err != nil {
		t.Fatalf("C device %v: %v\nstdout: %q\nstderr: %s", args, err, out, stderr)
	}
	if !strings.Contains(stderr, "CRC-32C") {
		t.Errorf("C device did not verify DONE: %s", stderr)
	}
	t.Logf("C device %s: %s", args[0], strings.TrimSpace(stderr))
	return out
}

func TestCDeviceAgainstMcpd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mcpd and runs llama.cpp")
	}
	dir := t.TempDir()
	plain, signed := build(t, dir, false), build(t, dir, true)
	mcpd, model := buildMcpd(t, dir), testmodel.Tiny(t, dir)

	// The UART: mcpd opens the terminal side by name, the devices use the
	// master (the C program inherits it as fd 3).
	master, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer tty.Close()
	if err := device.MakeRaw(tty); err != nil {
		t.Fatal(err)
	}
	// A noisy UART: mcpd's end and the device's end are two pty pairs joined
	// by a shim that paces at 115200 baud and flips bits.
	noisyMaster, noisyTTY, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer noisyMaster.Close()
	defer noisyTTY.Close()
	devMaster, devTTY, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer devMaster.Close()
	defer devTTY.Close()
	for _, f := range []*os.File{noisyTTY, devTTY} {
		if err := device.MakeRaw(f); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "mcpd.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[keys]\n%s = %q\n[schemas.fan]\nid = 1\njson = '%s'\n[limits]\ntool_choice = \"first\"\n",
		signedID, hex.EncodeToString(key), fanSchema)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeUDPAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var logs syncBuffer
	daemon := exec.CommandContext(ctx, mcpd, "--config", conf, "--backend", "native", "--model", model, "--threads", "1",
		"--listen-udp", addr, "--serial", tty.Name()+":115200",
		"--serial", noisyTTY.Name()+":115200", "--http", "off", "--log-level", "warn")
	daemon.Stdout, daemon.Stderr = &logs, &logs
	daemon.Cancel = func() error { return daemon.Process.Signal(syscall.SIGTERM) }
	daemon.WaitDelay = 10 * time.Second
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		if err := daemon.Wait(); err != nil {
			t.Errorf("mcpd: %v\n%s", err, logs.String())
		}
	}()

	udp, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	want := goAnswer(ctx, t, udp, device.Config{DeviceID: "go-udp", MaxData: 128, Window: 2})
	if want == "" {
		t.Fatal("the Go device got an empty answer")
	}
	t.Logf("Go device's answer over UDP: %q", want)

	for _, tc := range []struct {
		name  string
		bin   string
		extra []*os.File
		args  []string
	}{
		{"udp", plain, nil, []string{"--udp", addr, "--device-id", "c-udp", "--max-data", "128", "--window", "2"}},
		{"udp-small-frames", plain, nil, []string{"--udp", addr, "--device-id", "c-udp-32", "--max-data", "32", "--window", "1", "--max-send", "32"}},
		{"udp-signed", signed, nil, []string{"--udp", addr, "--device-id", signedID, "--max-data", "64", "--window", "3", "--key", hex.EncodeToString(key)}},
		{"serial", plain, []*os.File{master}, []string{"--serial-fd", "3", "--baud", "115200", "--device-id", "c-uart", "--max-data", "64", "--window", "1"}},
		{"serial-signed", signed, []*os.File{master}, []string{"--serial-fd", "3", "--device-id", signedID, "--max-data", "64", "--window", "2", "--key", hex.EncodeToString(key)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cAnswer(ctx, t, tc.bin, tc.extra, tc.args...); got != want {
				t.Errorf("C device's answer differs from the Go device's:\n got %q\nwant %q", got, want)
			}
		})
	}

	// A BYE of an earlier session still on the line — an earlier run's BYE,
	// sent again as it exited — which mcpd answers with BYE while it has no
	// session there: the next run reads that answer before its WELCOME. It
	// must drop it unanswered: a BYE sent back reached mcpd after the HELLO
	// and closed the session the HELLO opened (seq 2 is after the HELLO's 0:
	// new, taken), and the run failed with "the daemon closed the session"
	// (the serial-noisy flake of TestCDeviceAgainstMcpd).
	t.Run("serial-after-stale-bye", func(t *testing.T) {
		bye, err := serialproto.AppendFrame(nil, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdBye, Seq: 2})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := master.Write(bye); err != nil {
			t.Fatal(err)
		}
		if got := cAnswer(ctx, t, plain, []*os.File{master}, "--serial-fd", "3", "--device-id", "c-uart-stale", "--max-data", "64", "--window", "1"); got != want {
			t.Errorf("C device's answer differs from the Go device's:\n got %q\nwant %q", got, want)
		}
	})

	// The extended STATUS_REPLY (docs/protocol.md §11.11): the C device asks
	// for it after its answer, twice with the same greedy question; the
	// engine's KV cache counts each request as a hit or a miss, and the
	// second finds the prompt the first left evaluated.
	t.Run("udp-status", func(t *testing.T) {
		kv := func() (hits, misses int) {
			t.Helper()
			_, stderr, err := runC(ctx, plain, nil, "--udp", addr, "--device-id", "c-status", "--max-data", "128", "--window", "2", "--status")
			m := regexp.MustCompile(`(?m)^status: kv cache: (\d+) hits, (\d+) misses`).FindStringSubmatch(stderr)
			if err != nil || m == nil || !strings.Contains(stderr, "status: extended layout") {
				t.Fatalf("C device --status: %v\n%s", err, stderr)
			}
			fmt.Sscan(m[1], &hits)
			fmt.Sscan(m[2], &misses)
			return hits, misses
		}
		h1, m1 := kv()
		h2, m2 := kv()
		t.Logf("kv cache: %d hits, %d misses, then %d hits, %d misses", h1, m1, h2, m2)
		if h2 != h1+1 || m2 != m1 {
			t.Errorf("the repeated question: kv hits %d → %d, misses %d → %d; want one more hit", h1, h2, m1, m2)
		}
	})

	// Device tools (docs/protocol.md §16) on the tiny random model, which
	// the config's tool_choice "first" makes call a tool at once: the C
	// device (mcpf_ask --tools) and the Go device, declaring the same two
	// tools with handlers that answer alike, must see the same calls, each
	// run once, and end alike — the same answer, or the same error.
	t.Run("udp-tools", func(t *testing.T) {
		tr, err := device.DialUDP(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		goCalls, goText, goCode := goToolAnswer(ctx, t, tr)
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, plain, "--udp", addr, "--device-id", "c-tools", "--max-data", "64", "--window", "2", "--tools",
			"--max-tokens", fmt.Sprint(toolMaxTokens), "--seed", fmt.Sprint(seed), "--temperature", "0", prompt)
		var stdout, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &errOut
		err = cmd.Run()
		out, stderr := strings.TrimSuffix(stdout.String(), "\n"), errOut.String()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		var cCalls []string
		for _, m := range regexp.MustCompile(`(?m)^tool call \d+: (\w+) -> (\w+) "([^"]*)"$`).FindAllStringSubmatch(stderr, -1) {
			cCalls = append(cCalls, strings.Join(m[1:], " "))
		}
		t.Logf("C device: calls %q, exit %d, answer %q", cCalls, code, out)
		if len(cCalls) == 0 {
			t.Fatalf("the model called no tool on the C device\n%s", stderr)
		}
		if strings.Join(cCalls, "; ") != strings.Join(goCalls, "; ") || code != goCode || (code == 0 && out != goText) {
			t.Errorf("C and Go devices differ:\n C: calls %q, exit %d, answer %q\nGo: calls %q, code %d, answer %q\n%s",
				cCalls, code, out, goCalls, goCode, goText, stderr)
		}
	})

	// A constrained answer (docs/protocol.md §11.4.1): the C device names
	// schema 1 of mcpd's config with one option byte and gets minified JSON
	// of it from the random model (greedy, as every run here asks).
	t.Run("udp-schema", func(t *testing.T) {
		schema, err := grammar.Parse([]byte(fanSchema))
		if err != nil {
			t.Fatal(err)
		}
		got := cAnswer(ctx, t, plain, nil, "--udp", addr, "--device-id", "c-schema", "--max-data", "32", "--window", "1", "--schema", "1")
		if err := schema.Validate([]byte(got)); err != nil {
			t.Errorf("%v: %q", err, got)
		}
	})

	// The ESP32 Wi-Fi UDP example (examples/esp32_udp), built for the host
	// over its real sockets, asks this mcpd.
	t.Run("esp32-udp-example", func(t *testing.T) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		bin := buildESP32UDP(t, dir, host, port)
		out, errOut, err := runC(ctx, bin, nil)
		if err != nil {
			t.Fatalf("%v\nstdout %s\nstderr %s", err, out, errOut)
		}
		m := regexp.MustCompile(`(?s)^\[session open\]\n(.+)\n\[done: (\d+) tokens\]\n?$`).FindStringSubmatch(out)
		if m == nil || m[2] == "0" {
			t.Fatalf("output %q", out)
		}
	})

	// Impaired links: the C device's retransmission, resync and NACK
	// handling must still bring the exact answer — or, should a corruption
	// slip past the CRC-8, its CRC-32C check must refuse the answer (exit
	// status 1, "checksum"); an attempt may fail that way, none may return
	// a wrong answer as right.
	line, err := impair.StartLine(ctx, noisyMaster, devMaster, impair.LineConfig{Baud: 115200, BitErrorRate: 1e-3, Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := impair.NewUDPProxy(impair.UDPConfig{Target: netip.MustParseAddrPort(addr), Seed: 7,
		Up:   impair.Faults{Loss: 0.15, Duplicate: 0.1, Reorder: 0.15},
		Down: impair.Faults{Loss: 0.15, Duplicate: 0.1, Reorder: 0.15}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = proxy.Run(ctx) }()
	for _, tc := range []struct {
		name string
		bin  string
		args []string
	}{
		{"udp-lossy", plain, []string{"--udp", proxy.Addr().String(), "--device-id", "c-lossy", "--max-data", "32", "--window", "2", "--max-send", "32", "--retries", "20"}},
		// With SACK (§8.2): chunks after a gap kept, only the gaps resent.
		{"udp-lossy-sack", plain, []string{"--udp", proxy.Addr().String(), "--device-id", "c-lossy-sack", "--max-data", "32", "--window", "4", "--hold", "3", "--max-send", "32", "--retries", "20"}},
		{"serial-noisy", plain, []string{"--serial", devTTY.Name(), "--device-id", "c-noisy", "--max-data", "64", "--window", "2", "--max-send", "48", "--retries", "20"}},
		{"serial-noisy-signed", signed, []string{"--serial", devTTY.Name(), "--device-id", signedID, "--max-data", "64", "--window", "2", "--retries", "20", "--key", hex.EncodeToString(key)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for run := range 4 { // more frames, more faults
				askImpaired(ctx, t, tc.bin, tc.args, want, run)
			}
		})
	}
	ab, ba := line.Stats()
	st := proxy.Stats()
	t.Logf("noisy UART: %d+%d bytes, %d+%d bits flipped; lossy UDP: dropped %d up, %d down, duplicated %d+%d, reordered %d+%d",
		ab.Bytes, ba.Bytes, ab.FlippedBits, ba.FlippedBits, st.Up.Dropped, st.Down.Dropped, st.Up.Duplicated, st.Down.Duplicated, st.Up.Reordered, st.Down.Reordered)
	if ab.FlippedBits+ba.FlippedBits == 0 || st.Up.Dropped+st.Down.Dropped == 0 {
		t.Error("the impaired links impaired nothing: the test proved nothing")
	}

	// The Go device over the same UART gets the same answer too (it reads
	// the master from here on, so it goes last).
	if got := goAnswer(ctx, t, device.NewStream(master), device.Config{DeviceID: "go-uart", MaxData: 64, Window: 1, RTO: 300 * time.Millisecond}); got != want {
		t.Errorf("Go device over the UART: %q, want %q", got, want)
	}

	// A signed device with the wrong key is refused, not answered.
	cmd := exec.CommandContext(ctx, signed, "--udp", addr, "--device-id", signedID, "--key", strings.Repeat("11", 32), prompt)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 13 {
		t.Errorf("wrong key: %v, want exit status 13 (AUTH_FAILED)\n%s", err, out)
	}
}
