package backends_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/detect"
)

// fakeMachine writes files under a temporary root: path → content.
func fakeMachine(t testing.TB, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const (
	cpuinfoX86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma f16c\n"
	cpuinfoARM = "processor\t: 0\nFeatures\t: fp asimd asimddp\n\nprocessor\t: 1\n"
	meminfo    = "MemTotal:       16303368 kB\nMemAvailable:    8000000 kB\n"
)

var errNoSMI = errors.New(`exec: "nvidia-smi": executable file not found in $PATH`)

// runner answers nvidia-smi with out, or fails as a machine without it.
func runner(out string, err error) detect.CommandRunner {
	return func(_ context.Context, name string, _ ...string) ([]byte, error) {
		if name != "nvidia-smi" {
			return nil, errors.New("unexpected command " + name)
		}
		return []byte(out), err
	}
}

// gpuMachine is an NVIDIA box; cpuMachine a CPU-only board.
func gpuMachine(t testing.TB) *detect.Detector {
	root := fakeMachine(t, map[string]string{"proc/cpuinfo": cpuinfoX86, "proc/meminfo": meminfo,
		"proc/driver/nvidia/version": "NVRM version: 550\n", "dev/nvidia0": ""})
	return &detect.Detector{Root: root, Run: runner("NVIDIA L4, 23034\n", nil)}
}

func cpuMachine(t testing.TB) *detect.Detector {
	return &detect.Detector{Root: fakeMachine(t, map[string]string{"proc/cpuinfo": cpuinfoARM, "proc/meminfo": meminfo}),
		Run: runner("", errNoSMI)}
}

func openSelector(t testing.TB, cfg backends.OpenConfig) *backends.Selector {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := backends.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func chatReq(prompt string) backends.Request {
	return backends.Request{Messages: []backends.Message{{Role: backends.RoleUser, Content: prompt}}}
}

func greedyReq(prompt string, maxTokens int) backends.Request {
	return backends.Request{Messages: []backends.Message{{Role: backends.RoleUser, Content: prompt}},
		Options: backends.Options{TemperatureSet: true, MaxTokens: maxTokens}}
}

// collectPieces runs Generate and returns the pieces it emitted.
func collectPieces(ctx context.Context, b backends.Backend, req backends.Request) ([]string, backends.Result, error) {
	var pieces []string
	res, err := b.Generate(ctx, req, func(p []byte) error {
		pieces = append(pieces, string(p))
		return nil
	})
	return pieces, res, err
}

// waitFor polls cond every 10 ms until it holds, failing the test after limit.
func waitFor(t testing.TB, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
