package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"image"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// The wording of every protocol error as the user reads it, the HELLO
// nobody answered, and the bench summary: golden, so a change is seen.
func TestErrorWordingGolden(t *testing.T) {
	var b strings.Builder
	for code := sp.ErrorCode(1); code <= sp.CodeToolLimit; code++ {
		fmt.Fprintf(&b, "%d %s\n", protocolExit{sp.NewError(code, "daemon's text")}.ExitCode(), protocolExit{sp.NewError(code, "daemon's text")})
	}
	fmt.Fprintln(&b, unreachable{addr: "127.0.0.1:7700", wait: 2 * time.Second})
	fmt.Fprintln(&b, unreachable{addr: "/dev/ttyUSB0", wait: 2 * time.Second, serial: true})
	fmt.Fprintln(&b, notReady{"unavailable"})
	writeText(&b, benchReport{Scenarios: []scenarioReport{
		{Name: "single", Transport: "udp", Devices: 1, Duration: 5, Requests: 1, Tokens: 32, TokensPerSec: 6.4},
		{Name: "udp", Transport: "udp", Devices: 3, Duration: 5, Requests: 30, Errors: map[string]int{"BUSY": 2, "TIMEOUT": 1}, Tokens: 960, TokensPerSec: 192},
	}})
	golden(t, "errors.txt", b.String())
	if strings.Contains(b.String(), "map[") || strings.Contains(b.String(), "1 devices") || strings.Contains(b.String(), "1 requests") {
		t.Errorf("Go maps or wrong plurals:\n%s", b.String())
	}
}

// A daemon's ERROR reaches the user whole — the cause and its figures —
// in the words for its code, and becomes the exit status.
func TestAskErrorIsWorded(t *testing.T) {
	addr := startDaemon(t, wordEngine{err: fmt.Errorf("%w: 5033 prompt tokens, context 2048", backends.ErrPromptTooLong)})
	_, _, err := runCmd(t, "", "ask", "--udp", addr, "hello")
	want := "the request is too large for mcpd's limits [TOO_LARGE: prompt exceeds the context: 5033 prompt tokens, context 2048]"
	if err == nil || err.Error() != want {
		t.Fatalf("ask: %v\nwant %s", err, want)
	}
	var stderr bytes.Buffer
	if st := exitStatus(err, &stderr); st != 5 || stderr.String() != "mcpctl: "+want+"\n" {
		t.Fatalf("exit %d, stderr %q", st, stderr.String())
	}
}

// No daemon: the HELLO's wait is short and the message says where mcpctl
// looked.
func TestNoDaemonIsReportedQuickly(t *testing.T) {
	// A port nobody listens on: bind one, note it, free it.
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	start := time.Now()
	_, _, err = runCmd(t, "", "ask", "--udp", addr, "--connect-timeout", "1s", "hello")
	want := "no answer from " + addr + " within 1s: is mcpd running at " + addr + "?"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("ask with no daemon: %v\nwant %s…", err, want)
	}
	if el := time.Since(start); el > 8*time.Second {
		t.Fatalf("the connect timeout was not applied: %v", el)
	}
}

// Without --udp or --serial mcpctl talks to mcpd's default address.
func TestDefaultTarget(t *testing.T) {
	l, err := daemon.ListenUDP(DefaultTarget)
	if err != nil {
		t.Skipf("%s is taken on this machine: %v", DefaultTarget, err)
	}
	d, err := daemon.New(daemon.Config{}, wordEngine{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, l); close(done) }()
	defer func() { cancel(); <-done }()
	out, _, err := runCmd(t, "", "ask", "two words")
	if err != nil || out != "words two \n" {
		t.Fatalf("ask without a target: %v %q", err, out)
	}
}

// slowEngine streams a word every 10 ms until cancelled, and counts the
// requests that ended by cancellation.
type slowEngine struct {
	started   chan struct{}
	cancelled atomic.Int64
}

func (*slowEngine) Name() string { return "slow" }
func (e *slowEngine) Generate(ctx context.Context, _ backends.Request, emit backends.Emit) (backends.Result, error) {
	close(e.started)
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			e.cancelled.Add(1)
			return backends.Result{Tokens: i}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if err := emit([]byte("word ")); err != nil {
			return backends.Result{Tokens: i}, err
		}
	}
}
func (*slowEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "slow"}, nil
}
func (*slowEngine) Healthy(context.Context) error { return nil }
func (*slowEngine) Close() error                  { return nil }

// Ctrl-C during an answer: mcpctl sends CANCEL (the engine stops long
// before any deadline), then exits 130.
func TestInterruptCancelsAndExits130(t *testing.T) {
	e := &slowEngine{started: make(chan struct{})}
	addr := startDaemon(t, e)
	ctx, interrupt := context.WithCancel(context.Background()) // what signal.NotifyContext gives main
	go func() { <-e.started; time.Sleep(50 * time.Millisecond); interrupt() }()
	var out, errb bytes.Buffer
	err := run(ctx, []string{"ask", "--udp", addr, "--timeout", "1m", "go on forever"}, strings.NewReader(""), &out, &errb)
	var stderr bytes.Buffer
	if st := exitStatus(err, &stderr); st != 130 || stderr.String() != "mcpctl: interrupted\n" {
		t.Fatalf("exit %d (%v), stderr %q", st, err, stderr.String())
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.cancelled.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the engine was not stopped: no CANCEL reached mcpd")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sickEngine is an engine that is not healthy.
type sickEngine struct{ wordEngine }

func (sickEngine) Healthy(context.Context) error { return errors.New("model file missing") }
func (sickEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{}, errors.New("none")
}

// status exits 1 when mcpd is not ready, and says "none loaded" rather
// than an empty model name.
func TestStatusNotReady(t *testing.T) {
	addr := startDaemon(t, sickEngine{})
	out, _, err := runCmd(t, "", "status", "--udp", addr)
	if out != "unavailable: backend words, model none loaded, load 0%, 0 queued\n" {
		t.Fatalf("status output %q", out)
	}
	var stderr bytes.Buffer
	if st := exitStatus(err, &stderr); st != 1 || stderr.String() != "mcpctl: mcpd is not ready: unavailable\n" {
		t.Fatalf("exit %d, stderr %q", st, stderr.String())
	}
}

// Every command explains itself under -h (golden), and a bad flag is
// reported once, with the usage, exit 2.
func TestHelpAndBadFlags(t *testing.T) {
	var all strings.Builder
	for _, cmd := range []string{"ask", "ping", "status", "bench", "demo", "loopback", "decode", "impair"} {
		_, errOut, err := runCmd(t, "", cmd, "-h")
		if !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%s -h: %v", cmd, err)
		}
		lines := strings.Split(errOut, "\n")
		if len(lines) < 4 || !strings.HasPrefix(lines[0], "usage: mcpctl "+cmd) || lines[1] != "" || len(lines[2]) < 20 {
			t.Errorf("%s -h has no description:\n%s", cmd, errOut)
		}
		fmt.Fprintf(&all, "=== mcpctl %s -h\n%s", cmd, errOut)
	}
	golden(t, "help.txt", all.String())

	_, errOut, err := runCmd(t, "", "status", "--bogus")
	var stderr bytes.Buffer
	st := exitStatus(err, &stderr)
	if st != 2 || stderr.Len() != 0 || strings.Count(errOut, "flag provided but not defined: -bogus") != 1 {
		t.Fatalf("exit %d; mcpctl printed %q after the flag package's %q", st, stderr.String(), errOut)
	}
}

// The real binary and a real SIGINT: the answer is streaming, Ctrl-C
// arrives, mcpctl tells mcpd to CANCEL (the engine stops) and exits 130.
func TestSIGINTExits130(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mcpctl")
	}
	bin := filepath.Join(t.TempDir(), "mcpctl")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	e := &slowEngine{started: make(chan struct{})}
	addr := startDaemon(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "ask", "--udp", addr, "--timeout", "1m", "go on forever")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the answer streams, then interrupt as a terminal does.
	buf := make([]byte, 5)
	if _, err := io.ReadFull(stdout, buf); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 130 || stderr.String() != "mcpctl: interrupted\n" {
		t.Fatalf("exit %v, stderr %q", err, stderr.String())
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.cancelled.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the engine was not stopped: no CANCEL reached mcpd")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The histogram's p50/p95/p99 names never overlap, however close the
// percentiles are.
func TestMarkerLabelsDoNotOverlap(t *testing.T) {
	names := []string{"p50", "p95", "p99"}
	for _, xs := range [][]int{{100, 300, 500}, {100, 400, 403}, {200, 201, 202}, {50, 52, 300}} {
		pos := markerLabels(xs, names, 40)
		for i := range pos {
			ri := image.Rect(pos[i].X, pos[i].Y-12, pos[i].X+len(names[i])*glyphWidth, pos[i].Y)
			for j := range i {
				rj := image.Rect(pos[j].X, pos[j].Y-12, pos[j].X+len(names[j])*glyphWidth, pos[j].Y)
				if ri.Overlaps(rj) {
					t.Errorf("xs %v: %s at %v overlaps %s at %v", xs, names[i], pos[i], names[j], pos[j])
				}
			}
			if pos[i].X != xs[i]+2 {
				t.Errorf("xs %v: %s not beside its line", xs, names[i])
			}
		}
	}
}
