package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/llamacpp"
	"github.com/mcpd-project/mcpd/backends/ollama"
	"github.com/mcpd-project/mcpd/daemon"
)

// ollamaSection is the [ollama] table (docs/backends.md).
type ollamaSection struct {
	// Endpoints are Ollama base URLs (default http://127.0.0.1:11434).
	Endpoints []string `toml:"endpoints"`
	// Model is the Ollama model name. With backend = "ollama" and no
	// [ollama] model, the top-level model is the Ollama name.
	Model string `toml:"model"`
	// KeepAlive: how long Ollama keeps the model loaded after a request;
	// "-1s" forever, "0s" unload at once; unset: Ollama's default (5m).
	KeepAlive         *duration `toml:"keep_alive"`
	ConnectTimeout    duration  `toml:"connect_timeout"`
	FirstTokenTimeout duration  `toml:"first_token_timeout"`
	TokenTimeout      duration  `toml:"token_timeout"`
	TotalTimeout      duration  `toml:"total_timeout"`
	Retries           int       `toml:"retries"` // 0: the default (2); -1: none
	BreakerFailures   int       `toml:"breaker_failures"`
	BreakerCooldown   duration  `toml:"breaker_cooldown"`
	ProbeInterval     duration  `toml:"probe_interval"`
	// Parallel is how many requests each endpoint runs at once (its
	// OLLAMA_NUM_PARALLEL; default 4); ParallelPerEndpoint overrides it by
	// endpoint URL. Their sum is what max_concurrent follows when unset.
	Parallel            int            `toml:"parallel"`
	ParallelPerEndpoint map[string]int `toml:"parallel_per_endpoint"`
	// NoWarmUp leaves loading the model to the first request instead of
	// loading it at start and after Ollama restarts.
	NoWarmUp bool `toml:"no_warm_up"`
}

// loadBackendEnv applies MCPD_OLLAMA_URL (comma-separated),
// MCPD_OLLAMA_MODEL, MCPD_OLLAMA_KEEP_ALIVE and MCPD_FALLBACK.
func (c *config) loadBackendEnv(getenv func(string) string) error {
	if v := getenv("MCPD_OLLAMA_URL"); v != "" {
		c.Ollama.Endpoints = strings.Split(v, ",")
	}
	if v := getenv("MCPD_OLLAMA_MODEL"); v != "" {
		c.Ollama.Model = v
	}
	if v := getenv("MCPD_FALLBACK"); v != "" {
		c.Fallback = strings.Split(v, ",")
	}
	if v := getenv("MCPD_OLLAMA_KEEP_ALIVE"); v != "" {
		var d duration
		if err := d.UnmarshalText([]byte(v)); err != nil {
			return fmt.Errorf("MCPD_OLLAMA_KEEP_ALIVE=%q: %w", v, err)
		}
		c.Ollama.KeepAlive = &d
	}
	return nil
}

// backendFlags registers the engine-selection flags on fs; the returned
// function applies those given on the command line to cfg.
func backendFlags(fs *flag.FlagSet) func(cfg *config, set map[string]bool) {
	var urls multiFlag
	fs.Var(&urls, "ollama-url", "Ollama endpoint URL (repeatable; default http://127.0.0.1:11434)")
	model := fs.String("ollama-model", "", "Ollama model name (with --backend ollama, --model also names it)")
	keep := fs.Duration("keep-alive", 0, "how long Ollama keeps the model loaded after a request (-1s forever, 0s unload at once)")
	fallback := fs.String("fallback", "", "engines tried, in order, when the chosen one fails before the first token (comma-separated: native, ollama)")
	return func(cfg *config, set map[string]bool) {
		if set["ollama-url"] {
			cfg.Ollama.Endpoints = urls
		}
		if set["ollama-model"] {
			cfg.Ollama.Model = *model
		}
		if set["keep-alive"] {
			cfg.Ollama.KeepAlive = &duration{*keep}
		}
		if set["fallback"] {
			cfg.Fallback = strings.Split(*fallback, ",")
		}
	}
}

// ollamaModel is the Ollama model name, "" when Ollama is not configured.
func (c *config) ollamaModel() string {
	if c.Ollama.Model != "" {
		return c.Ollama.Model
	}
	if c.Backend == "ollama" {
		return c.Model
	}
	return ""
}

// ggufPath is the native engine's model file, "" when there is none.
func (c *config) ggufPath() string {
	if c.Backend == "ollama" && c.Ollama.Model == "" {
		return "" // the top-level model names the Ollama model
	}
	return c.Model
}

// checkBackend validates the backend settings without starting anything
// (no file is loaded, no network contacted).
func checkBackend(cfg config) error {
	policy, err := backends.ParsePolicy(cfg.Backend)
	if err != nil {
		return err
	}
	if err := cfg.Cache.validate(); err != nil {
		return err
	}
	engines := map[backends.Policy]bool{policy: true}
	for _, f := range cfg.Fallback {
		p, err := backends.ParsePolicy(strings.TrimSpace(f))
		if err != nil || p == backends.PolicyAuto {
			return fmt.Errorf("fallback %q: want native or ollama", f)
		}
		engines[p] = true
	}
	for _, e := range cfg.Ollama.Endpoints {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("ollama endpoint %q: want http://host:port", e)
		}
	}
	// Whether the GGUF file is there and valid is not checked here: a
	// missing model is a state mcpd waits in (waiting.go), not a bad
	// configuration.
	needNative := policy == backends.PolicyNative || (policy == backends.PolicyAuto && (cfg.ggufPath() != "" || cfg.ollamaModel() == ""))
	if (needNative || engines[backends.PolicyNative]) && cfg.ggufPath() == "" {
		return errors.New("model: the native engine needs a GGUF file (mcpd-mkmodel -o FILE writes a small demo one)")
	}
	if engines[backends.PolicyOllama] && cfg.ollamaModel() == "" {
		return errors.New("backend ollama: no model (set --model or [ollama] model to an Ollama model name, e.g. llama3.2:1b)")
	}
	return nil
}

// openBackend starts the engines and the selection between them, the
// in-process one only when native is true; call checkBackend first.
func openBackend(ctx context.Context, cfg config, log *slog.Logger, native bool) (backends.Backend, error) {
	budget := cfg.Cache.budget()
	sel := backends.OpenConfig{Policy: backends.Policy(cfg.Backend), ResponseCache: cfg.Cache.responseBudget(),
		Budget: budget, Logger: log}
	for _, f := range cfg.Fallback {
		sel.Fallback = append(sel.Fallback, backends.Policy(strings.TrimSpace(f)))
	}
	if path := cfg.ggufPath(); path != "" && native {
		log.Info("native engine model", "path", path)
		sel.Native = llamacpp.Starter(llamacpp.Config{
			ModelPath:       path,
			Threads:         cfg.Engine.Threads,
			SequenceContext: cfg.Engine.ContextSize,
			Parallel:        max(cfg.Limits.MaxConcurrent, 0),
			NoKVReuse:       cfg.Cache.NoKVReuse,
			WarmFile:        cfg.Cache.warmFile(),
			WarmBudget:      cfg.Cache.warmBudget(),
			Budget:          budget,
			Logger:          log,
		})
		// One engine in the process: Go keeps the cores its decode
		// threads leave (docs/native.md).
		llamacpp.ReserveCores(cfg.Engine.Threads, log)
	}
	if m := cfg.ollamaModel(); m != "" {
		o := cfg.Ollama
		oc := ollama.Config{
			Endpoints: o.Endpoints, Model: m,
			ConnectTimeout: o.ConnectTimeout.Duration, FirstTokenTimeout: o.FirstTokenTimeout.Duration,
			TokenTimeout: o.TokenTimeout.Duration, TotalTimeout: o.TotalTimeout.Duration,
			Retries: o.Retries, BreakerFailures: o.BreakerFailures, BreakerCooldown: o.BreakerCooldown.Duration,
			ProbeInterval: o.ProbeInterval.Duration, Parallel: o.Parallel, EndpointParallel: o.ParallelPerEndpoint,
			NoWarmUp: o.NoWarmUp, Logger: log,
		}
		if o.KeepAlive != nil {
			k := o.KeepAlive.Duration
			oc.KeepAlive = &k
		}
		sel.Ollama = ollama.Starter(oc)
	}
	return backends.Open(ctx, sel)
}

// followCapacity sets the daemon's max_concurrent, when the configuration
// leaves it unset, to what the engine runs at once (its batched sequences,
// Ollama's parallel slots): fewer would queue devices while the engine
// could batch them, more would only move the queue into the engine.
func followCapacity(dc *daemon.Config, b backends.Backend, log *slog.Logger) {
	if dc.MaxConcurrent > 0 {
		return
	}
	if c, ok := b.(backends.CapacityReporter); ok && c.Capacity() > 0 {
		dc.MaxConcurrent = c.Capacity()
		log.Info("max_concurrent follows the engine's capacity", "max_concurrent", dc.MaxConcurrent)
	}
}
