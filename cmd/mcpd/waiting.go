package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/native/gguf"
)

// A first install has no model: the package's configuration names
// /var/lib/mcpd/models/model.gguf and nothing is there yet. Exiting would
// have systemd restart mcpd every RestartSec forever while devices hear
// nothing at all. Instead mcpd serves its links and answers every request
// with MODEL_NOT_FOUND and what to do, says "waiting for a model at …" in
// STATUS=, /status and STATUS replies, and loads the model once the file
// is there and has stopped changing (polled, see pollModel) or on reload.
//
// The same holds for a model file that is unreadable or not a GGUF file
// (a copy still in progress, the wrong permissions): the file's state is
// polled, and a new state is tried again. A model that validates but that
// the engine then refuses (not enough memory, a CPU the build cannot run
// on) still fails the start: that is not fixed by waiting for a file.

// modelPollInterval is how often a missing model's path is looked at. A
// stat every 2 s costs nothing; inotify would need the directory to exist
// and to be watched again when it is replaced, and gains only seconds.
const modelPollInterval = 2 * time.Second

// noModelError is what every request gets while there is no usable model.
// A device sees only the first 64 bytes of an ERROR's text
// (docs/protocol.md §11.7), so what to do comes first.
type noModelError struct {
	path string
	why  error // why the file cannot be used
}

func (e *noModelError) Error() string {
	return fmt.Sprintf("no model yet: install %s (%s); mcpd loads it when it is there",
		e.path, describeModelProblem(e.why))
}

// Unwrap makes it a backends.ErrModelNotFound, which the daemon answers
// with MODEL_NOT_FOUND (9), and keeps the cause inspectable.
func (e *noModelError) Unwrap() []error { return []error{backends.ErrModelNotFound, e.why} }

// waitingFor is the status text: "waiting for a model at PATH (reason)".
func (e *noModelError) waitingFor() string {
	return fmt.Sprintf("waiting for a model at %s (%s)", e.path, describeModelProblem(e.why))
}

// describeModelProblem says why a model file is unusable without repeating
// its path: "no such file or directory", "permission denied", or the
// validation error.
func describeModelProblem(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// modelProblem reports why the GGUF file cfg names for the in-process
// engine cannot be used, nil when it can or when no GGUF file is named.
func modelProblem(cfg config) *noModelError {
	path := cfg.ggufPath()
	if path == "" {
		return nil
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return &noModelError{path: path, why: errors.New("is a directory; model must name a .gguf file")}
	}
	if _, err := gguf.ValidateFile(path); err != nil {
		return &noModelError{path: path, why: err}
	}
	return nil
}

// servesWithoutNative: the policy has Ollama to serve while the in-process
// engine waits for its model (auto, or ollama with native as a fallback).
func servesWithoutNative(cfg config) bool {
	return cfg.ollamaModel() != "" && cfg.Backend != string(backends.PolicyNative)
}

// waitingEngine stands in for the engine while there is no usable model.
type waitingEngine struct{ err *noModelError }

var _ backends.Backend = (*waitingEngine)(nil)

// Name is what STATUS replies, /status and the metrics show as the backend.
func (w *waitingEngine) Name() string { return "none" }

func (w *waitingEngine) Generate(context.Context, backends.Request, backends.Emit) (backends.Result, error) {
	return backends.Result{}, w.err
}

func (w *waitingEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{}, w.err
}

// Healthy makes /status's state "unavailable" with this reason, /readyz
// 503, and a STATUS reply UNAVAILABLE.
func (w *waitingEngine) Healthy(context.Context) error { return errors.New(w.err.waitingFor()) }

func (w *waitingEngine) Close() error { return nil }

// modelWait is the service's watch on a missing or unusable model file.
type modelWait struct {
	err   *noModelError
	seen  string // the file's state at the last poll ("" absent)
	tried string // a state already tried and refused: not tried again
}

// fileState identifies a file's content and access: a state that stays the
// same over one poll is a file no longer being written, and a chmod (ctime)
// or a rename into place (inode) is a new state worth a new try.
func fileState(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	s := fmt.Sprintf("%d|%d|%v", st.Size(), st.ModTime().UnixNano(), st.Mode())
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s += fmt.Sprintf("|%d|%d.%d", sys.Ino, sys.Ctim.Sec, sys.Ctim.Nsec)
	}
	return s
}

// pollModel looks at the missing model's path; once a file is there and
// unchanged since the last poll, it is loaded through the same path as a
// reload of the configuration in force.
func (s *service) pollModel(ctx context.Context, d *daemon.Daemon) {
	w := s.wait
	if w == nil {
		return
	}
	st := fileState(w.err.path)
	prev := w.seen
	w.seen = st
	if st == "" || st != prev || st == w.tried {
		return // absent, still being written, or already refused
	}
	w.tried = st
	s.log.Info("model file found; loading it", "path", w.err.path)
	err := s.apply(ctx, d, s.cur)
	switch {
	case err != nil:
		s.log.Error("loading the model failed; still waiting", "err", err)
	case s.wait != nil:
		s.log.Error("the model file cannot be used; still waiting", "path", s.wait.err.path, "err", s.wait.err.why)
	}
	if s.wait != nil {
		s.wait.seen, s.wait.tried = st, st
	}
}

// newModelWait starts watching problem's path; the file's state now is
// the one just tried.
func newModelWait(problem *noModelError) *modelWait {
	if problem == nil {
		return nil
	}
	st := fileState(problem.path)
	return &modelWait{err: problem, seen: st, tried: st}
}
