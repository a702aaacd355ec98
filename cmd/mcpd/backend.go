package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native/gguf"
)

// checkBackend validates the backend settings without starting anything.
// "auto" is the in-process llama.cpp engine today; the Ollama backend and
// GPU-aware selection come with issue 5.
func checkBackend(cfg config) error {
	switch cfg.Backend {
	case "auto", "native":
		if cfg.Model == "" {
			return errors.New("model: the native engine needs a GGUF file (make models writes a small one to testdata/models/tiny.gguf)")
		}
		if _, err := gguf.ValidateFile(cfg.Model); err != nil {
			return fmt.Errorf("model: %w", err)
		}
		return nil
	case "ollama":
		return errors.New("backend ollama: not in this build yet (the Ollama backend is issue 5); use native")
	}
	return fmt.Errorf("backend %q: want auto, native or ollama", cfg.Backend)
}

// openBackend starts the engine; call checkBackend first.
func openBackend(ctx context.Context, cfg config, log *slog.Logger) (backends.Backend, error) {
	switch cfg.Backend {
	case "auto", "native":
		log.Info("loading model", "path", cfg.Model)
		return backends.NewLlama(ctx, backends.LlamaConfig{
			ModelPath:       cfg.Model,
			Threads:         cfg.Engine.Threads,
			SequenceContext: cfg.Engine.ContextSize,
			Parallel:        max(cfg.Limits.MaxConcurrent, 0),
			Logger:          log,
		})
	}
	return nil, checkBackend(cfg)
}
