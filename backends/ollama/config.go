package ollama

import (
	"log/slog"
	"time"
)

// Config configures the Ollama engine.
type Config struct {
	// Endpoints are Ollama base URLs, tried by health and load (default
	// http://127.0.0.1:11434).
	Endpoints []string
	// Model is the model requests with no name use, e.g. "llama3.2:1b".
	Model string
	// KeepAlive is how long Ollama keeps the model loaded after a request:
	// nil leaves Ollama's default (5 min), negative keeps it forever, 0
	// unloads at once.
	KeepAlive *time.Duration
	// Phase timeouts. ConnectTimeout bounds each TCP connect (default 3s);
	// FirstTokenTimeout the wait for the first streamed line, which
	// includes loading the model (default 2m); TokenTimeout the gap between
	// two lines (default 30s); TotalTimeout a whole Generate (default none:
	// the caller's context decides).
	ConnectTimeout    time.Duration
	FirstTokenTimeout time.Duration
	TokenTimeout      time.Duration
	TotalTimeout      time.Duration
	// Retries is how many more attempts a request gets while none of its
	// output has reached the caller (default 2; negative: none).
	Retries int
	// RetryBackoff is the first retry's delay, doubled per retry with full
	// jitter, at most 2s (default 100ms).
	RetryBackoff time.Duration
	// BreakerFailures consecutive failures open an endpoint's breaker
	// (default 3); BreakerCooldown later one trial may close it again
	// (default 10s).
	BreakerFailures int
	BreakerCooldown time.Duration
	// ProbeInterval is how often endpoints are checked in the background:
	// reachability, the model's presence, what /api/ps says is loaded
	// (default 15s).
	ProbeInterval time.Duration
	// MaxIdleConnsPerHost bounds the kept-alive connections per endpoint
	// (default 8).
	MaxIdleConnsPerHost int
	// Parallel is how many requests each endpoint serves at once
	// (OLLAMA_NUM_PARALLEL on that server; default 4). EndpointParallel
	// overrides it per endpoint URL. Their sum is the engine's Capacity,
	// which the daemon's max_concurrent follows unless configured: set
	// them to what the servers really run, or requests wait in Ollama's
	// queue (too high) or in mcpd's (too low) instead of running.
	Parallel         int
	EndpointParallel map[string]int
	// NoWarmUp leaves loading the model to the first request instead of
	// asking Ollama to load it at start and after it restarts
	// (warmup.go; for comparisons). KeepAlive 0 implies it.
	NoWarmUp bool
	// WarmUpWait is how long New waits for the model to load before it
	// returns, the rest loading in the background (default 10s).
	WarmUpWait time.Duration
	// OnHealthChange is called (on its own goroutine) when an endpoint's
	// breaker changes state or a model appears or disappears.
	OnHealthChange func()
	Logger         *slog.Logger
}

// DefaultParallel is Config.Parallel when unset. Ollama's own
// OLLAMA_NUM_PARALLEL default has been 4 or 1 depending on version and
// memory; 4 keeps a server with 4 slots busy and costs a server with 1 only
// a short queue on its side.
const DefaultParallel = 4

func (c *Config) defaults() {
	if len(c.Endpoints) == 0 {
		c.Endpoints = []string{"http://127.0.0.1:11434"}
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 3 * time.Second
	}
	if c.FirstTokenTimeout <= 0 {
		c.FirstTokenTimeout = 2 * time.Minute
	}
	if c.TokenTimeout <= 0 {
		c.TokenTimeout = 30 * time.Second
	}
	if c.Retries == 0 {
		c.Retries = 2
	}
	c.Retries = max(c.Retries, 0)
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 100 * time.Millisecond
	}
	if c.BreakerFailures <= 0 {
		c.BreakerFailures = 3
	}
	if c.BreakerCooldown <= 0 {
		c.BreakerCooldown = 10 * time.Second
	}
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = 15 * time.Second
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = 8
	}
	if c.Parallel <= 0 {
		c.Parallel = DefaultParallel
	}
	if c.WarmUpWait <= 0 {
		c.WarmUpWait = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}
