//go:build mcpdfault

package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/backends"
)

// A test build (go build -tags mcpdfault) of mcpd whose engine can be made
// to hang for real: the systemd tests need an engine that stops producing
// and ignores cancellation, the failure the watchdog exists for, and
// llama.cpp cannot be made to do that on demand. Everything else is the
// real llama.cpp engine. Never part of a release build.

// hangPrompt in a request's last message makes its Generate block, deaf to
// its context, until the engine is closed. slowPrompt makes the real
// engine's output arrive one piece per slowPiece (cancellation still
// honoured), so a request can be caught in flight by a shutdown.
const (
	hangPrompt = "MCPD-FAULT-HANG"
	slowPrompt = "MCPD-FAULT-SLOW"
	slowPiece  = 100 * time.Millisecond
)

func withFaults(b backends.Backend, log *slog.Logger) backends.Backend {
	log.Warn("test build: fault injection on", "hang_prompt", hangPrompt, "slow_prompt", slowPrompt)
	return &faultEngine{Backend: b, closed: make(chan struct{})}
}

type faultEngine struct {
	backends.Backend
	once   sync.Once
	closed chan struct{}
}

func (f *faultEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	if n := len(req.Messages); n > 0 && strings.Contains(req.Messages[n-1].Content, hangPrompt) {
		<-f.closed // not ctx: a hung engine does not listen
		return backends.Result{}, backends.ErrClosed
	}
	if n := len(req.Messages); n > 0 && strings.Contains(req.Messages[n-1].Content, slowPrompt) {
		return f.Backend.Generate(ctx, req, func(piece []byte) error {
			select {
			case <-time.After(slowPiece):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			return emit(piece)
		})
	}
	return f.Backend.Generate(ctx, req, emit)
}

// Capacity forwards the wrapped engine's, so max_concurrent follows it in
// fault builds too.
func (f *faultEngine) Capacity() int {
	if c, ok := f.Backend.(backends.CapacityReporter); ok {
		return c.Capacity()
	}
	return 0
}

func (f *faultEngine) Close() error {
	f.once.Do(func() { close(f.closed) })
	return f.Backend.Close()
}

// faultLoadDelay makes every engine load take MCPD_FAULT_LOAD_DELAY (a
// duration) longer: the tiny test model loads in milliseconds, too fast
// for the PID-1 test to see that systemd holds the unit in "activating"
// until the engine is loaded.
func faultLoadDelay(log *slog.Logger) {
	d, err := time.ParseDuration(os.Getenv("MCPD_FAULT_LOAD_DELAY"))
	if err != nil || d <= 0 {
		return
	}
	log.Warn("test build: delaying the engine load", "delay", d)
	time.Sleep(d)
}
