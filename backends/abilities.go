package backends

import (
	"context"
	"errors"
	"log/slog"

	"github.com/mcpd-project/mcpd/backends/detect"
)

// ErrNoMemory: the model would not fit in the memory available.
var ErrNoMemory = errors.New("backends: not enough memory for the model")

// Optional abilities. An engine (or the Selector) implements those that
// make sense for it; callers ask for them by these names with a type
// assertion, never by an unnamed interface, so a rename breaks the build
// rather than silently disabling a feature.

// DegradedReporter is implemented by engines that can serve but not at
// their best: the Selector running on a fallback engine, an Ollama engine
// with an endpoint's breaker not closed. The daemon's STATUS says DEGRADED.
type DegradedReporter interface {
	Degraded() bool
}

// EndpointReporter is implemented by engines spread over several servers
// (Ollama): one status per server, for /status and metrics.
type EndpointReporter interface {
	Endpoints() []EndpointStatus
}

// Accelerated is implemented by engines that may know a reason to prefer
// them over the in-process CPU engine even when this machine shows no GPU:
// the model sits in GPU memory on their server, or the server is another
// host. AccelerationHint returns that reason in words, or "".
type Accelerated interface {
	AccelerationHint() string
}

// CapacityReporter is implemented by engines that know how many requests
// they run at once without making one wait for another: the in-process
// engine's batched sequences, the sum of Ollama's parallel slots. The
// daemon's max_concurrent follows it unless configured.
type CapacityReporter interface {
	Capacity() int
}

// Refresher is implemented by engines whose health comes from background
// probes (Ollama): Refresh probes now, so that a decision to move requests
// to the engine does not rest on an old answer.
type Refresher interface {
	Refresh(ctx context.Context)
}

// SelectionReporter is implemented by the Selector: which engine serves
// and why, for /status, metrics and logs.
type SelectionReporter interface {
	Status() SelectionStatus
}

// EndpointStatus is a snapshot of one server of a multi-server engine.
type EndpointStatus struct {
	URL       string
	Breaker   string // closed, open, half-open
	Failures  int    // consecutive failures while closed
	Opened    int64  // how many times the breaker opened
	InFlight  int64
	Parallel  int   // requests the server runs at once (configured)
	Requests  int64 // attempts sent
	Model     string
	Presence  string // of Model: unknown, present, missing
	Size      int64  // of Model when loaded (/api/ps), bytes
	SizeVRAM  int64  // of it in GPU memory: equal to Size = all on GPU, 0 = CPU
	LastError string
}

// Starter starts one engine for Open. The engine packages provide them
// (llamacpp.Starter, ollama.Starter), so that this package — and the
// daemon above it — need not link any engine.
type Starter func(ctx context.Context, env StartEnv) (Backend, error)

// StartEnv is what Open tells a Starter.
type StartEnv struct {
	// Machine is the probed machine (memory available, GPUs).
	Machine detect.Machine
	// Logger is the selector's logger unless the engine has its own.
	Logger *slog.Logger
	// HealthChanged asks the Selector to re-evaluate its choice now; an
	// engine whose health changes in the background (breakers, model
	// appearing) calls it. Safe to call from any goroutine, never blocks.
	HealthChanged func()
}
