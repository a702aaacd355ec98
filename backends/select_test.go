package backends_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
)

// fakeEngine is an engine whose health, output and optional abilities the
// test sets; it lets the selection logic be tested without cgo or HTTP.
// select_engines_test.go repeats the important cases with real engines.
type fakeEngine struct {
	name   string
	output []string

	mu        sync.Mutex
	unhealthy error  // Healthy's answer
	genErr    error  // Generate fails with it before any output
	hint      string // AccelerationHint
	degraded  bool
	endpoints []backends.EndpointStatus
	refreshes atomic.Int32
	calls     atomic.Int32
	closed    atomic.Bool
}

func (f *fakeEngine) Name() string { return f.name }

func (f *fakeEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	f.calls.Add(1)
	f.mu.Lock()
	err := f.genErr
	f.mu.Unlock()
	if err != nil {
		return backends.Result{}, err
	}
	for _, p := range f.output {
		if err := emit([]byte(p)); err != nil {
			return backends.Result{}, err
		}
	}
	return backends.Result{Tokens: len(f.output)}, nil
}

func (f *fakeEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: f.name + "-model"}, nil
}

func (f *fakeEngine) Healthy(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.unhealthy
}

func (f *fakeEngine) Close() error {
	if f.closed.Swap(true) {
		return backends.ErrClosed
	}
	return nil
}

func (f *fakeEngine) set(fn func(f *fakeEngine)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// fakeOllamaEngine adds the optional abilities the Ollama engine has.
type fakeOllamaEngine struct{ *fakeEngine }

func (f fakeOllamaEngine) AccelerationHint() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hint
}

func (f fakeOllamaEngine) Degraded() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.degraded
}

func (f fakeOllamaEngine) Endpoints() []backends.EndpointStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.endpoints
}

func (f fakeOllamaEngine) Refresh(context.Context) { f.refreshes.Add(1) }

func (f fakeOllamaEngine) Capacity() int { return 12 }

// capacityEngine is a fake that reports a capacity.
type capacityEngine struct {
	*fakeEngine
	capacity int
}

func (c capacityEngine) Capacity() int { return c.capacity }

// starter hands e to Open, keeping the selector's HealthChanged in *poke.
func starter(e backends.Backend, poke *func()) backends.Starter {
	return func(_ context.Context, env backends.StartEnv) (backends.Backend, error) {
		if poke != nil {
			*poke = env.HealthChanged
		}
		return e, nil
	}
}

func failingStarter(err error) backends.Starter {
	return func(context.Context, backends.StartEnv) (backends.Backend, error) { return nil, err }
}

func TestSelectorAbilitiesOnFakes(t *testing.T) {
	native := &fakeEngine{name: "llama.cpp", output: []string{"n1", "n2"}}
	oll := fakeOllamaEngine{&fakeEngine{name: "ollama", output: []string{"o1"},
		endpoints: []backends.EndpointStatus{{URL: "http://10.0.0.2:11434", Breaker: "closed"}}}}
	var poke func()
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyAuto, Detector: cpuMachine(t),
		Native: starter(native, nil), Ollama: starter(oll, &poke)})

	// A CPU-only machine and no hint from Ollama: the in-process engine.
	if st := s.Status(); st.Chosen != "llama.cpp" || !strings.Contains(st.Reason, "CPU only") || len(st.Endpoints) != 1 {
		t.Fatalf("status %+v", st)
	}
	if got := s.Endpoints(); len(got) != 1 || got[0].URL != "http://10.0.0.2:11434" {
		t.Fatalf("endpoints %+v", got)
	}

	// Ollama says it has a reason (the model in GPU memory): asked to
	// re-evaluate, the selector refreshes Ollama first, then moves.
	oll.set(func(f *fakeEngine) { f.hint = "model in VRAM" })
	poke()
	waitFor(t, 5*time.Second, func() bool { return s.Name() == "ollama" })
	if st := s.Status(); !strings.Contains(st.Reason, "auto: model in VRAM") || st.Degraded {
		t.Fatalf("status %+v", st)
	}
	if n := oll.refreshes.Load(); n == 0 {
		t.Fatal("moved to Ollama without refreshing it first")
	}

	// An engine reporting itself degraded makes the selection degraded.
	oll.set(func(f *fakeEngine) { f.degraded = true })
	poke()
	waitFor(t, 5*time.Second, func() bool { return s.Degraded() })
	var dr backends.DegradedReporter = s // the daemon asks for it by this name
	if !dr.Degraded() {
		t.Fatal("DegradedReporter disagrees with Degraded")
	}
}

func TestSelectorFailsOverBeforeFirstTokenOnFakes(t *testing.T) {
	native := &fakeEngine{name: "llama.cpp", output: []string{"n1", "n2"}}
	oll := fakeOllamaEngine{&fakeEngine{name: "ollama", output: []string{"o1"}}}
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyOllama, Fallback: []backends.Policy{backends.PolicyNative},
		Detector: cpuMachine(t), Native: starter(native, nil), Ollama: starter(oll, nil)})
	for _, err := range []error{backends.ErrUnavailable, backends.ErrBusy, backends.ErrFailed, backends.ErrModelNotFound} {
		oll.set(func(f *fakeEngine) { f.genErr = fmt.Errorf("%w: injected", err) })
		pieces, res, gerr := collectPieces(context.Background(), s, chatReq("hi"))
		if gerr != nil || strings.Join(pieces, "") != "n1n2" || res.Tokens != 2 {
			t.Fatalf("%v: %q %+v %v", err, pieces, res, gerr)
		}
	}
	if st := s.Status(); st.Failovers != 4 {
		t.Fatalf("%d failovers, want 4", st.Failovers)
	}
	// A request error (not an engine fault) is the caller's: no failover.
	bad := errors.New("bad request")
	oll.set(func(f *fakeEngine) { f.genErr = bad })
	before := native.calls.Load()
	if _, _, err := collectPieces(context.Background(), s, chatReq("hi")); !errors.Is(err, bad) {
		t.Fatalf("err %v", err)
	}
	if native.calls.Load() != before {
		t.Fatal("a request error moved to the fallback engine")
	}
}

func TestOpenStartersOnFakes(t *testing.T) {
	boom := fmt.Errorf("%w: no model", backends.ErrModelNotFound)
	native := &fakeEngine{name: "llama.cpp"}
	// The policy's own engine failing is an error, and what started is closed.
	_, err := backends.Open(context.Background(), backends.OpenConfig{Policy: backends.PolicyNative,
		Fallback: []backends.Policy{backends.PolicyOllama}, Detector: cpuMachine(t), Logger: slog.New(slog.DiscardHandler),
		Native: failingStarter(boom), Ollama: starter(&fakeEngine{name: "ollama"}, nil)})
	if !errors.Is(err, backends.ErrModelNotFound) {
		t.Fatalf("err %v", err)
	}
	// A fallback that cannot start is left out.
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyNative, Fallback: []backends.Policy{backends.PolicyOllama},
		Detector: cpuMachine(t), Native: starter(native, nil), Ollama: failingStarter(boom)})
	if st := s.Status(); strings.Join(st.Order, ",") != "llama.cpp" {
		t.Fatalf("order %v", st.Order)
	}
	if err := s.Close(); err != nil || !native.closed.Load() {
		t.Fatalf("close: %v, engine closed %v", err, native.closed.Load())
	}
	if err := s.Close(); !errors.Is(err, backends.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
}

func TestSelectorCapacityIsTheLargest(t *testing.T) {
	native := capacityEngine{&fakeEngine{name: "llama.cpp"}, 8}
	oll := fakeOllamaEngine{&fakeEngine{name: "ollama"}}
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyNative, Fallback: []backends.Policy{backends.PolicyOllama},
		Detector: cpuMachine(t), Native: starter(native, nil), Ollama: starter(oll, nil)})
	if got := s.Capacity(); got != 12 {
		t.Fatalf("capacity %d, want 12 (the larger engine's)", got)
	}
	alone := openSelector(t, backends.OpenConfig{Policy: backends.PolicyNative, Detector: cpuMachine(t),
		Native: starter(&fakeEngine{name: "llama.cpp"}, nil)})
	if got := alone.Capacity(); got != 0 {
		t.Fatalf("capacity %d of an engine that reports none, want 0", got)
	}
}

// lockedBuffer is a log destination safe for the selector's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The periodic probe sees the free memory move every time, which changes
// the selection's reason text but not the selection: that is logged once,
// at start, and the later probes only at debug level; a real change (the
// engine failing over) is logged again.
func TestSelectionLoggedOnlyWhenItChanges(t *testing.T) {
	det := cpuMachine(t)
	native := &fakeEngine{name: "llama.cpp", output: []string{"n"}}
	oll := fakeOllamaEngine{&fakeEngine{name: "ollama", output: []string{"o"}}}
	var poke func()
	logs := &lockedBuffer{}
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyAuto, Detector: det, DetectInterval: 5 * time.Millisecond,
		Native: starter(native, nil), Ollama: starter(oll, &poke),
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	meminfo := filepath.Join(det.Root, "proc/meminfo")
	for i := range 20 {
		content := fmt.Sprintf("MemTotal:       16303368 kB\nMemAvailable:    %d kB\n", 8000000+1024*(i+1))
		if err := os.WriteFile(meminfo, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%d MiB available", (8000000+1024*(i+1))>>10)
		waitFor(t, 5*time.Second, func() bool { return strings.Contains(s.Status().Reason, want) })
	}
	if n := strings.Count(logs.String(), `msg="backend selected"`); n != 1 {
		t.Fatalf("%d 'backend selected' lines while nothing changed but free memory:\n%s", n, logs)
	}
	if n := strings.Count(logs.String(), `msg="backend selection unchanged"`); n < 19 {
		t.Fatalf("only %d debug lines for 20 reason changes", n)
	}
	oll.set(func(f *fakeEngine) { f.hint = "model in VRAM" })
	poke()
	waitFor(t, 5*time.Second, func() bool { return s.Name() == "ollama" })
	if n := strings.Count(logs.String(), `msg="backend selected"`); n != 2 {
		t.Fatalf("a failover logged %d times in all, want the start and the change", n-1)
	}
}

// The response cache on a fake engine: least recently used answers go
// first when the budget is full, and an answer is never half stored.
func TestResponseCacheBudgetOnFakes(t *testing.T) {
	native := &fakeEngine{name: "llama.cpp", output: []string{strings.Repeat("x", 200)}}
	// Room for two entries of ~200 bytes of text plus bookkeeping.
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyNative, Detector: cpuMachine(t), Native: starter(native, nil),
		ResponseCache: 1000})
	ask := func(prompt string) {
		t.Helper()
		if _, _, err := collectPieces(context.Background(), s, greedyReq(prompt, 8)); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		prompt string
		ran    bool // the engine was called
	}{
		{"a", true}, {"b", true}, {"a", false}, // a is now the most recent
		{"c", true},  // evicts b
		{"a", false}, // still there
		{"b", true},  // was evicted
	}
	for i, st := range steps {
		before := native.calls.Load()
		ask(st.prompt)
		if ran := native.calls.Load() > before; ran != st.ran {
			t.Fatalf("step %d (%q): engine ran %v, want %v", i, st.prompt, ran, st.ran)
		}
	}
	if st := s.CacheStats(); st.Evictions != 2 || st.Entries != 2 || st.Bytes > st.Budget || st.Hits != 2 || st.Misses != 4 {
		t.Fatalf("stats %+v", st)
	}
	// A failed generation is not stored.
	native.set(func(f *fakeEngine) { f.genErr = errors.New("boom") })
	if _, _, err := collectPieces(context.Background(), s, greedyReq("d", 8)); err == nil {
		t.Fatal("no error")
	}
	native.set(func(f *fakeEngine) { f.genErr = nil })
	before := native.calls.Load()
	ask("d")
	if native.calls.Load() == before {
		t.Fatal("a failed answer was served from the cache")
	}
}
