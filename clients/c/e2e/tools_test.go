package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/impair"
	"github.com/mcpd-project/mcpd/serialproto"
)

// toolModel plays a model that uses the C device's two tools: it reads
// the soil, switches the relay on, then answers with what it read. It
// records what each generation was given.
type toolModel struct {
	loop bool // call read_soil every time: a model looping on a tool

	mu   sync.Mutex
	seen [][]backends.Message
}

func (m *toolModel) Name() string { return "tool-model" }
func (m *toolModel) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "tool-model", ContextLength: 2048}, nil
}
func (m *toolModel) Healthy(context.Context) error { return nil }
func (m *toolModel) Close() error                  { return nil }

func (m *toolModel) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	m.mu.Lock()
	m.seen = append(m.seen, append([]backends.Message(nil), req.Messages...))
	m.mu.Unlock()
	var results []string
	for _, msg := range req.Messages {
		if msg.Role == backends.RoleUser { // this request's results: those after its prompt
			results = nil
		}
		if msg.Role == backends.RoleTool {
			results = append(results, msg.Content)
		}
	}
	index := func(name string) int {
		for i, t := range req.Tools {
			if t.Name == name {
				return i
			}
		}
		return -1
	}
	switch {
	case len(req.Tools) == 0:
		return backends.Result{}, fmt.Errorf("%w: the request came without the device's tools", backends.ErrFailed)
	case len(results) == 0 || m.loop:
		return backends.Result{Tokens: 3, Call: &backends.ToolCall{Tool: index("read_soil"), Name: "read_soil", Args: []byte("{}")}}, nil
	case len(results) == 1:
		return backends.Result{Tokens: 5, Call: &backends.ToolCall{Tool: index("set_relay"), Name: "set_relay", Args: []byte(`{"on":true}`)}}, nil
	}
	if err := emit([]byte("Soil at " + results[0] + " %, " + results[1] + ".")); err != nil {
		return backends.Result{}, err
	}
	return backends.Result{Tokens: 6, TTFT: time.Millisecond}, ctx.Err()
}

// startDaemon runs the daemon with engine b on a loopback UDP port until
// ctx ends, and stops it at the test's cleanup.
func startDaemon(ctx context.Context, t *testing.T, cfg daemon.Config, b backends.Backend) netip.AddrPort {
	t.Helper()
	d, err := daemon.New(cfg, b, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	l, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

// TestCDeviceToolErrors: the C device against the real daemon when tools
// go wrong (docs/protocol.md §16). A model looping on read_soil is cut
// after the daemon's 4 calls: each ran once on the device, which exits
// with TOOL_LIMIT (23). A reading slower than the daemon's tool timeout
// ends the request with TOOL_TIMEOUT (22), the late result refused
// without a second answer.
func TestCDeviceToolErrors(t *testing.T) {
	plain := build(t, t.TempDir(), false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := startDaemon(ctx, t, daemon.Config{ToolTimeout: 300 * time.Millisecond}, &toolModel{loop: true}).String()
	calls := regexp.MustCompile(`(?m)^tool call (\d+): read_soil -> OK "41"$`)
	for _, tc := range []struct {
		name      string
		args      []string
		code, ran int
	}{
		{"limit", []string{"--device-id", "c-loop"}, 23, 4},
		{"timeout", []string{"--device-id", "c-slow", "--soil-ms", "1000"}, 22, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := runC(ctx, plain, nil, append([]string{"--udp", addr, "--tools"}, tc.args...)...)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tc.code {
				t.Fatalf("%v, want exit status %d\nstdout %q\nstderr %s", err, tc.code, out, stderr)
			}
			got := calls.FindAllStringSubmatch(stderr, -1)
			for i, m := range got {
				if m[1] != strconv.Itoa(i) {
					t.Errorf("call %s ran as the %d. (each once, in order)", m[1], i+1)
				}
			}
			if len(got) != tc.ran {
				t.Errorf("%d calls ran on the device, want %d\n%s", len(got), tc.ran, stderr)
			}
			t.Logf("%s", strings.ReplaceAll(strings.TrimSpace(stderr), "\n", "; "))
		})
	}
}

// TestCDeviceTools: the C device (examples/posix/mcpf_ask --tools) against
// the real daemon over loopback UDP, directly and through a link that
// loses, duplicates and reorders datagrams: it declares read_soil and
// set_relay, the model calls both, each handler runs exactly once, the
// model reads the results and the answer completes, verified.
func TestCDeviceTools(t *testing.T) {
	dir := t.TempDir()
	plain, signed := build(t, dir, false), build(t, dir, true)
	model := &toolModel{}
	k, err := serialproto.NewKey(key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := startDaemon(ctx, t, daemon.Config{Keys: map[string]serialproto.Key{signedID: k}}, model)
	proxy, err := impair.NewUDPProxy(impair.UDPConfig{Target: addr, Seed: 19,
		Up:   impair.Faults{Loss: 0.1, Duplicate: 0.25, Reorder: 0.1},
		Down: impair.Faults{Loss: 0.1, Duplicate: 0.25, Reorder: 0.1}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = proxy.Run(ctx) }()

	calls := regexp.MustCompile(`(?m)^tool call (\d+): (\w+) -> (\w+) "([^"]*)"$`)
	var roundTrips []float64
	for _, tc := range []struct {
		name string
		bin  string
		runs int
		args []string
	}{
		{"udp", plain, 20, []string{"--udp", addr.String(), "--device-id", "c-tools", "--max-data", "64", "--window", "2"}},
		{"udp-small-frames", plain, 1, []string{"--udp", addr.String(), "--device-id", "c-tools-32", "--max-data", "32", "--window", "1", "--max-send", "32"}},
		{"udp-signed", signed, 1, []string{"--udp", addr.String(), "--device-id", signedID, "--max-data", "64", "--window", "2", "--key", fmt.Sprintf("%x", key)}},
		{"udp-lossy-duplicating", plain, 4, []string{"--udp", proxy.Addr().String(), "--device-id", "c-tools-lossy", "--max-data", "32", "--window", "2", "--max-send", "32", "--retries", "20"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for run := range tc.runs {
				out, stderr, err := runC(ctx, tc.bin, nil, append(tc.args, "--tools", "--soil", "37")...)
				if err != nil {
					t.Fatalf("run %d: %v\nstdout %q\nstderr %s", run, err, out, stderr)
				}
				got := calls.FindAllStringSubmatch(stderr, -1)
				want := [][]string{{"0", "read_soil", "OK", "37"}, {"1", "set_relay", "OK", "relay on"}}
				if len(got) != len(want) {
					t.Fatalf("run %d: %d tool calls ran on the device, want %d (each exactly once)\n%s", run, len(got), len(want), stderr)
				}
				for i := range want {
					if strings.Join(got[i][1:], " ") != strings.Join(want[i], " ") {
						t.Errorf("run %d: call %d: %q, want %q", run, i, got[i][1:], want[i])
					}
				}
				if out != "Soil at 37 %, relay on." || !strings.Contains(stderr, "relay: on") {
					t.Errorf("run %d: answer %q\n%s", run, out, stderr)
				}
				t.Logf("run %d: %s", run, strings.ReplaceAll(strings.TrimSpace(stderr), "\n", "; "))
				if tc.name == "udp" {
					roundTrips = append(roundTrips, toolRoundTrips(t, stderr)...)
				}
			}
		})
	}
	// The C device's tool round trips on the clean link, from its
	// TOOL_RESULT sent to the stream's next chunk (the model here answers
	// at once): a figure for issue 19's "≤ 2 ms beyond the handler", not a
	// pass/fail, the box being shared.
	slices.Sort(roundTrips)
	if len(roundTrips) > 0 {
		t.Logf("tool round trips of the C device over loopback UDP: %d, median %.3f ms, max %.3f ms",
			len(roundTrips), roundTrips[len(roundTrips)/2], roundTrips[len(roundTrips)-1])
	}
	// What the model read: each result once, in its conversation.
	model.mu.Lock()
	defer model.mu.Unlock()
	for _, msgs := range model.seen {
		var tools []string
		for _, m := range msgs {
			if m.Role == backends.RoleUser { // the history keeps earlier requests' results
				tools = nil
			}
			if m.Role == backends.RoleTool {
				tools = append(tools, m.Content)
			}
		}
		if len(tools) > 2 || (len(tools) >= 1 && tools[0] != "37") || (len(tools) == 2 && tools[1] != "relay on") {
			t.Errorf("a generation read the tool results %q", tools)
		}
	}
	st := proxy.Stats()
	if st.Up.Duplicated+st.Down.Duplicated == 0 {
		t.Error("the impaired link duplicated nothing: exactly-once was not tested")
	}
	t.Logf("impaired link: dropped %d up, %d down, duplicated %d+%d, reordered %d+%d",
		st.Up.Dropped, st.Down.Dropped, st.Up.Duplicated, st.Down.Duplicated, st.Up.Reordered, st.Down.Reordered)
}

// toolRoundTrips reads mcpf_ask's "tool round trip: X ms" lines: one per
// call, or the device did not see the stream go on after a result.
func toolRoundTrips(t *testing.T, stderr string) []float64 {
	t.Helper()
	var out []float64
	for _, m := range regexp.MustCompile(`(?m)^tool round trip: ([0-9.]+) ms$`).FindAllStringSubmatch(stderr, -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if len(out) != 2 {
		t.Errorf("%d tool round trips timed, want 2\n%s", len(out), stderr)
	}
	return out
}
