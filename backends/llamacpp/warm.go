package llamacpp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/mcpd-project/mcpd/backends/kvstate"
	"github.com/mcpd-project/mcpd/native"
)

// The persistent warm cache (docs/caching.md): when the engine closes
// (SIGTERM, an engine replaced by a reload) the KV caches its sequences
// keep — conversations' earlier turns, shared system prompts — go to
// Config.WarmFile with the tokens they hold, most recently used first,
// within Config.WarmBudget; the next engine on the same model, build and
// layout loads them before it serves, so an old conversation's next turn
// evaluates only what it adds, as if the daemon had never stopped.
//
// A file that is not usable — missing, corrupt, truncated, another
// version, model, build or layout — is refused with one log line and the
// engine starts cold; kvstate checks every byte (CRC-32C) before
// llama.cpp sees it.

// warmHeader is the header this engine's file must have.
func (e *Engine) warmHeader() (kvstate.Header, error) {
	id, err := kvstate.Identity(e.cfg.ModelPath, engineBuild())
	if err != nil {
		return kvstate.Header{}, err
	}
	return kvstate.Header{Identity: id, Sequences: uint32(e.cfg.Parallel), SequenceContext: uint32(e.seqCtx)}, nil
}

// engineBuild names what computes the KV cache: the instruction set and
// the llama.cpp that Ollama's module pins (its state format and kernels
// may change between versions).
func engineBuild() string {
	v := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/ollama/ollama" {
				v = d.Version
			}
		}
	}
	return native.BuildInfo() + " ollama " + v
}

// warmUp decodes one token and clears it again before the engine serves,
// as llama.cpp's own tools do: the first decode of a new context pays for
// starting the worker threads and touching the compute buffers, and
// without this the first device's request would pay for it.
func (e *Engine) warmUp(ctx context.Context) {
	tok := native.Token(0)
	if sp, err := e.model.Special(); err == nil && sp.BOS >= 0 {
		tok = sp.BOS
	}
	var b native.Batch
	b.Add(tok, 0, 0, true)
	start := time.Now()
	err := e.nctx.Decode(ctx, &b)
	if cerr := e.nctx.ClearSequence(0); err == nil {
		err = cerr
	}
	if err == nil {
		err = e.nctx.Idle()
	}
	if err != nil {
		e.cfg.Logger.Warn("warm-up decode failed", "err", err)
		return
	}
	e.cfg.Logger.Debug("warm-up decode", "ms", time.Since(start).Milliseconds())
}

// loadWarm fills e.kv and the context's sequences from the warm file.
// Called before the scheduler starts; on any error every sequence it
// filled is cleared again and the engine starts cold.
func (e *Engine) loadWarm() {
	if e.cfg.WarmFile == "" || e.cfg.NoKVReuse {
		return
	}
	start := time.Now()
	n, tokens, err := e.readWarm()
	log := e.cfg.Logger.With("file", e.cfg.WarmFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		e.notePrint(e.kv)
		log.Info("no warm cache to load: starting cold")
	case err != nil:
		for i := range e.kv.held {
			if len(e.kv.held[i]) > 0 {
				if cerr := e.nctx.ClearSequence(i); cerr != nil {
					log.Warn("clearing a sequence failed", "seq", i, "err", cerr)
				}
				e.kv.held[i] = nil
			}
		}
		log.Warn("warm cache refused: starting cold", "err", err)
	default:
		if fi, err := os.Stat(e.cfg.WarmFile); err == nil && (e.cfg.WarmBudget <= 0 || fi.Size() <= e.cfg.WarmBudget) {
			e.notePrint(e.kv) // else a smaller budget now: the next save rewrites it
		}
		e.warmLoaded.Add(int64(tokens))
		log.Info("warm cache loaded", "sequences", n, "tokens", tokens, "ms", time.Since(start).Milliseconds())
	}
}

func (e *Engine) readWarm() (seqs, tokens int, err error) {
	f, err := os.Open(e.cfg.WarmFile)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	want, err := e.warmHeader()
	if err != nil {
		return 0, 0, err
	}
	rd, err := kvstate.NewReader(bufio.NewReaderSize(f, 1<<20), fi.Size(), want)
	if err != nil {
		return 0, 0, err
	}
	nv := e.model.VocabSize()
	// Records come most recently used first: the first gets the highest
	// use count, so the least recent is the first the scheduler reuses.
	for i := 0; ; i++ {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return seqs, tokens, nil
		}
		if err != nil {
			return seqs, tokens, err
		}
		toks := make([]native.Token, len(rec.Tokens))
		for j, t := range rec.Tokens {
			if t < 0 || int(t) >= nv {
				return seqs, tokens, fmt.Errorf("%w: token %d outside the vocabulary", kvstate.ErrCorrupt, t)
			}
			toks[j] = native.Token(t)
		}
		held, err := e.nctx.SetSequenceState(i, rec.State)
		if err != nil {
			return seqs, tokens, err
		}
		if held != len(toks) {
			return seqs, tokens, fmt.Errorf("%w: sequence %d holds %d positions for %d tokens", kvstate.ErrCorrupt, i,
				held, len(toks))
		}
		e.kv.held[i] = toks
		e.kv.used[i] = -int64(i)
		seqs++
		tokens += len(toks)
	}
}
