//go:build cgo

// The selection with both real engines: llama.cpp in-process (cgo) on the
// generated tiny model and the Ollama engine against an HTTP server that
// speaks Ollama's API. select_test.go covers the same logic on fakes,
// without cgo.
package backends_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/detect"
	"github.com/mcpd-project/mcpd/backends/llamacpp"
	"github.com/mcpd-project/mcpd/backends/ollama"
	"github.com/mcpd-project/mcpd/internal/ollamatest"
	"github.com/mcpd-project/mcpd/internal/testmodel"
)

func tinyNative(t testing.TB) backends.Starter {
	return llamacpp.Starter(llamacpp.Config{ModelPath: testmodel.Tiny(t, t.TempDir()), Threads: 1, SequenceContext: 256, Parallel: 1})
}

func TestAutoSelectsByMachine(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	native := tinyNative(t)
	tests := []struct {
		name   string
		det    *detect.Detector
		srv    ollamatest.Model
		chosen string
		reason string
	}{
		{"GPU machine", gpuMachine(t), ollamatest.Model{}, "ollama", "GPU found (nvidia NVIDIA L4"},
		{"CPU-only board", cpuMachine(t), ollamatest.Model{}, "llama.cpp", "CPU only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyAuto, Native: native,
				Ollama: ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny"}), Detector: tt.det})
			st := s.Status()
			if st.Chosen != tt.chosen || s.Name() != tt.chosen || !strings.Contains(st.Reason, tt.reason) {
				t.Fatalf("chose %s (%q), want %s (%q)", st.Chosen, st.Reason, tt.chosen, tt.reason)
			}
			if len(st.Order) != 2 || st.Degraded || len(st.Endpoints) != 1 || st.Endpoints[0].Breaker != "closed" {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

func TestFailoverBeforeFirstTokenIsInvisible(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyAuto, Native: tinyNative(t), Detector: gpuMachine(t),
		Ollama: ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny", Retries: -1, FirstTokenTimeout: 200 * time.Millisecond})})
	if s.Name() != "ollama" {
		t.Fatalf("chose %s", s.Name())
	}
	// The reference: the native engine's own answer.
	pieces, _, err := collectPieces(context.Background(), s.Engine(backends.PolicyNative), greedyReq("hi", 8))
	want := strings.Join(pieces, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []ollamatest.Fault{ollamatest.StallBeforeFirst, ollamatest.InternalError, ollamatest.QueueFull} {
		srv.FailNext(f)
		var got strings.Builder
		res, err := s.Generate(context.Background(), greedyReq("hi", 8), func(p []byte) error { got.Write(p); return nil })
		if err != nil || got.String() != want || res.Tokens != 8 {
			t.Fatalf("%s: %q (%d tokens), %v; want native's %q", f, got.String(), res.Tokens, err, want)
		}
	}
	if st := s.Status(); st.Failovers != 3 {
		t.Fatalf("%d failovers", st.Failovers)
	}
	// After output started, a failure is the caller's to see.
	srv.FailNext(ollamatest.CutMidStream)
	var got strings.Builder
	_, err = s.Generate(context.Background(), greedyReq("hi", 8), func(p []byte) error { got.Write(p); return nil })
	if !errors.Is(err, backends.ErrFailed) || got.String() != strings.Join(ollamatest.DefaultTokens[:2], "") {
		t.Fatalf("%q, %v", got.String(), err)
	}
}

func TestSelectionFollowsHealth(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	det := &detect.Detector{Root: fakeMachine(t, map[string]string{"proc/meminfo": meminfo}), Run: runner("", errNoSMI)}
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyOllama, Fallback: []backends.Policy{backends.PolicyNative}, Native: tinyNative(t), Detector: det,
		DetectInterval: 50 * time.Millisecond,
		Ollama: ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny", Retries: -1, BreakerFailures: 1,
			BreakerCooldown: 100 * time.Millisecond, ProbeInterval: 50 * time.Millisecond})})
	if s.Name() != "ollama" {
		t.Fatalf("chose %s", s.Name())
	}
	srv.Stop() // the breaker opens at the next probe: the choice moves
	waitFor(t, 5*time.Second, func() bool { return s.Name() == "llama.cpp" })
	st := s.Status()
	if !st.Degraded || !strings.Contains(st.Reason, "ollama unhealthy") || st.Endpoints[0].Breaker == "closed" {
		t.Fatalf("status %+v", st)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return s.Name() == "ollama" && !s.Degraded() })
}

func TestAutoNoticesAGPUAppearing(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	root := fakeMachine(t, map[string]string{"proc/meminfo": meminfo, "proc/cpuinfo": cpuinfoX86})
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyAuto, Native: tinyNative(t), DetectInterval: 30 * time.Millisecond,
		Detector: &detect.Detector{Root: root, Run: runner("NVIDIA RTX A2000, 6138\n", nil)},
		Ollama:   ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny"})})
	if s.Name() != "llama.cpp" {
		t.Fatalf("chose %s before the driver came up", s.Name())
	}
	// The driver finishes loading after mcpd started.
	for p, c := range map[string]string{"proc/driver/nvidia/version": "NVRM 550\n", "dev/nvidia0": ""} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return s.Name() == "ollama" })
	if st := s.Status(); !strings.Contains(st.Reason, "RTX A2000") || !st.Machine.HasGPU() {
		t.Fatalf("status %+v", st)
	}
}

// TestModelCheckedOnSelection: moving requests to Ollama asks it for the
// model first; a model deleted since the last probe keeps them where they
// are, with a reason naming it.
func TestModelCheckedOnSelection(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	root := fakeMachine(t, map[string]string{"proc/meminfo": meminfo})
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyAuto, Native: tinyNative(t), DetectInterval: 30 * time.Millisecond,
		Detector: &detect.Detector{Root: root, Run: runner("NVIDIA L4, 23034\n", nil)},
		Ollama:   ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny", ProbeInterval: time.Hour})})
	if s.Name() != "llama.cpp" {
		t.Fatalf("chose %s", s.Name())
	}
	shows := srv.Hits("/api/show")
	srv.RemoveModel("tiny") // the last probe still says it is there
	for p, c := range map[string]string{"proc/driver/nvidia/version": "NVRM 550\n", "dev/nvidia0": ""} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return strings.Contains(s.Status().Reason, `model "tiny" is not on any Ollama endpoint`) })
	if s.Name() != "llama.cpp" || srv.Hits("/api/show") == shows {
		t.Fatalf("chose %s after %d /api/show", s.Name(), srv.Hits("/api/show")-shows)
	}
}

func TestAutoPrefersOllamaWithModelInVRAM(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{Models: []ollamatest.Model{{Name: "tiny", Size: 1 << 30, SizeVRAM: 1 << 30}}})
	// Without warm-up: the Ollama engine would load the model itself at
	// start (and the choice move at once, as below).
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyAuto, Native: tinyNative(t), Detector: cpuMachine(t),
		Ollama: ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny", ProbeInterval: 30 * time.Millisecond,
			NoWarmUp: true})})
	if s.Name() != "llama.cpp" {
		t.Fatalf("chose %s", s.Name())
	}
	// Something loads the model into Ollama's GPU memory (here: a request
	// straight to Ollama); /api/ps says so and the choice moves.
	if _, _, err := collectPieces(context.Background(), s.Engine(backends.PolicyOllama), chatReq("hi")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return s.Name() == "ollama" })
	if r := s.Status().Reason; !strings.Contains(r, "size_vram") {
		t.Fatalf("reason %q", r)
	}
}

func TestOpenPolicies(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	native := tinyNative(t)
	lowMem := &detect.Detector{Root: fakeMachine(t, map[string]string{"proc/meminfo": "MemTotal: 65536 kB\nMemAvailable: 16384 kB\n"}),
		Run: runner("", errNoSMI)}
	ollamaEngine := ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny"})
	tests := []struct {
		name    string
		cfg     backends.OpenConfig
		chosen  string
		order   string
		wantErr string
	}{
		{name: "native only", cfg: backends.OpenConfig{Policy: backends.PolicyNative, Native: native, Ollama: ollamaEngine}, chosen: "llama.cpp", order: "llama.cpp"},
		{name: "ollama then native", cfg: backends.OpenConfig{Policy: backends.PolicyOllama, Fallback: []backends.Policy{backends.PolicyNative}, Native: native, Ollama: ollamaEngine},
			chosen: "ollama", order: "ollama llama.cpp"},
		{name: "ollama without a model name", cfg: backends.OpenConfig{Policy: backends.PolicyOllama, Native: native}, wantErr: "no model configured"},
		{name: "ollama model missing", cfg: backends.OpenConfig{Policy: backends.PolicyOllama, Ollama: ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "qwen3:8b"})},
			wantErr: `model "qwen3:8b" is not on Ollama`},
		{name: "auto: ollama model missing, native serves", cfg: backends.OpenConfig{Policy: backends.PolicyAuto, Native: native,
			Ollama: ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "qwen3:8b"})}, chosen: "llama.cpp", order: "llama.cpp"},
		{name: "native too big for memory", cfg: backends.OpenConfig{Policy: backends.PolicyNative, Native: native, Detector: lowMem},
			wantErr: "MiB is available"},
		{name: "auto: native too big, ollama serves", cfg: backends.OpenConfig{Policy: backends.PolicyAuto, Native: native, Ollama: ollamaEngine, Detector: lowMem},
			chosen: "ollama", order: "ollama"},
		{name: "nothing configured", cfg: backends.OpenConfig{Policy: backends.PolicyAuto}, wantErr: "no engine configured"},
		{name: "bad policy", cfg: backends.OpenConfig{Policy: "gpu"}, wantErr: "want auto, native or ollama"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cfg.Detector == nil {
				tt.cfg.Detector = cpuMachine(t)
			}
			tt.cfg.Logger = slog.New(slog.DiscardHandler)
			s, err := backends.Open(context.Background(), tt.cfg)
			if tt.wantErr != "" {
				if err == nil {
					s.Close()
					t.Fatalf("opened; want an error with %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			st := s.Status()
			if st.Chosen != tt.chosen || strings.Join(st.Order, " ") != tt.order {
				t.Fatalf("chose %s order %v, want %s %s", st.Chosen, st.Order, tt.chosen, tt.order)
			}
		})
	}
}
