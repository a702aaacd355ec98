package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/mcpd-project/mcpd/backends"
)

// openBackend starts the engine the configuration names. "auto" is the
// in-process llama.cpp engine today; the Ollama backend and GPU-aware
// selection come with issue 5.
func openBackend(ctx context.Context, cfg fileConfig, log *slog.Logger) (backends.Backend, error) {
	switch cfg.Backend {
	case "auto", "native":
		if cfg.Model == "" {
			return nil, errors.New("--model: the native engine needs a GGUF file (make models writes a small one to testdata/models/tiny.gguf)")
		}
		if _, err := os.Stat(cfg.Model); err != nil {
			return nil, fmt.Errorf("--model: %w", err)
		}
		log.Info("loading model", "path", cfg.Model)
		return backends.NewLlama(ctx, backends.LlamaConfig{
			ModelPath:       cfg.Model,
			Threads:         cfg.Threads,
			SequenceContext: cfg.ContextSize,
			Parallel:        max(cfg.MaxConcurrent, 0),
			Logger:          log,
		})
	case "ollama":
		return nil, errors.New("--backend ollama: not in this build yet (the Ollama backend is issue 5); use --backend native")
	}
	return nil, fmt.Errorf("--backend %q: want auto, native or ollama", cfg.Backend)
}
