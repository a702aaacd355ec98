package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/mcpd-project/mcpd/backends/detect"
)

// Policy says which engine serves requests.
type Policy string

const (
	// PolicyAuto: Ollama where there is a GPU for it (found on this
	// machine, reported by Ollama's /api/ps, or an endpoint on another
	// host), the in-process engine on a CPU-only machine; the other one is
	// the fallback.
	PolicyAuto Policy = "auto"
	// PolicyOllama: Ollama first, then Fallback.
	PolicyOllama Policy = "ollama"
	// PolicyNative: the in-process llama.cpp engine first, then Fallback.
	PolicyNative Policy = "native"
)

// ParsePolicy reads "auto", "ollama" or "native".
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case PolicyAuto, PolicyOllama, PolicyNative:
		return p, nil
	}
	return "", fmt.Errorf("backend %q: want auto, native or ollama", s)
}

// OpenConfig says which engines to start and how to choose between them.
type OpenConfig struct {
	Policy Policy
	// Fallback lists the engines ("native", "ollama") tried after the
	// policy's own, in order. Auto uses every configured engine.
	Fallback []Policy
	// Native starts the in-process engine (llamacpp.Starter); nil: none
	// (no GGUF file).
	Native Starter
	// Ollama starts the Ollama engine (ollama.Starter); nil: none (no
	// model name).
	Ollama Starter
	// Detector presents the machine (default: the real one).
	Detector *detect.Detector
	// DetectInterval is how often the machine is probed again: a GPU
	// driver may come up after mcpd (default 30s).
	DetectInterval time.Duration
	// ResponseCache is the byte budget of the response cache (0: none):
	// deterministic requests answered before are answered again from it
	// (ResponseCache).
	ResponseCache int64
	// Budget, when set, is shared by the response cache and the engines'
	// KV caches (docs/caching.md); ResponseCache then only says whether
	// there is a response cache.
	Budget *Budget
	Logger *slog.Logger
}

// Open starts the engines the policy needs and returns the Selector that
// routes requests between them. An engine that only serves as a fallback
// and cannot start (Ollama's model missing, a GGUF too big for memory) is
// left out with a warning; the policy's own engine failing is an error.
func Open(ctx context.Context, cfg OpenConfig) (*Selector, error) {
	if _, err := ParsePolicy(string(cfg.Policy)); err != nil {
		return nil, err
	}
	if cfg.Policy == PolicyOllama && cfg.Ollama == nil {
		return nil, errors.New("backend ollama: no model configured (the Ollama model name, e.g. llama3.2:1b)")
	}
	if cfg.Policy == PolicyNative && cfg.Native == nil {
		return nil, errors.New("backend native: no GGUF model file configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Detector == nil {
		cfg.Detector = &detect.Detector{}
	}
	if cfg.DetectInterval <= 0 {
		cfg.DetectInterval = 30 * time.Second
	}
	log := cfg.Logger
	want := wantedEngines(cfg)
	if len(want) == 0 {
		return nil, errors.New("backend auto: no engine configured (give a GGUF file for the native engine or an Ollama model)")
	}
	required := func(name Policy) bool { return cfg.Policy == name || len(want) == 1 }
	s := &Selector{cfg: cfg, log: log, engines: map[Policy]Backend{}, wake: make(chan bool, 1),
		closing: make(chan struct{}), done: make(chan struct{})}
	switch {
	case cfg.ResponseCache > 0 && cfg.Budget != nil:
		s.cache = NewSharedResponseCache(cfg.Budget)
	case cfg.ResponseCache > 0:
		s.cache = NewResponseCache(cfg.ResponseCache)
	}
	s.machine = cfg.Detector.Probe(ctx)
	log.Info("machine", "summary", s.machine.Summary())
	fail := func(err error) (*Selector, error) {
		for _, e := range s.engines {
			e.Close()
		}
		return nil, err
	}
	env := StartEnv{Machine: s.machine, Logger: log, HealthChanged: func() { s.poke(false) }}
	for _, p := range []Policy{PolicyOllama, PolicyNative} {
		if !slices.Contains(want, p) {
			continue
		}
		start := cfg.Ollama
		if p == PolicyNative {
			start = cfg.Native
		}
		e, err := start(ctx, env)
		switch {
		case err == nil:
			s.engines[p] = e
		case required(p):
			return fail(err)
		default:
			log.Warn(string(p)+" engine left out", "err", err)
		}
	}
	if len(s.engines) == 0 {
		return fail(errors.New("backend: no engine could start"))
	}
	s.evaluate(ctx, "start")
	go s.loop()
	return s, nil
}

// wantedEngines lists the configured engines the policy may use.
func wantedEngines(cfg OpenConfig) []Policy {
	var out []Policy
	add := func(p Policy) {
		if p == PolicyOllama && cfg.Ollama == nil || p == PolicyNative && cfg.Native == nil || slices.Contains(out, p) {
			return
		}
		out = append(out, p)
	}
	if cfg.Policy == PolicyAuto {
		add(PolicyOllama)
		add(PolicyNative)
		return out
	}
	add(cfg.Policy)
	for _, f := range cfg.Fallback {
		add(f)
	}
	return out
}
