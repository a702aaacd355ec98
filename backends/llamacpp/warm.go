package llamacpp

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"time"

	"github.com/mcpd-project/mcpd/backends"
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

// saveWarm writes the sequences' caches to the warm file. Called once the
// scheduler has stopped and before the context is freed.
func (e *Engine) saveWarm() {
	if e.cfg.WarmFile == "" || e.cfg.NoKVReuse {
		return
	}
	e.writeSnapshot(e.snapshotWarm(e.kv, make([]*slot, len(e.kv.held))))
}

// SaveWarm implements backends.WarmSaver: the caches the sequences hold
// now go to the warm file while the engine serves (a reload). The
// scheduler copies them between two decode steps; the file is written on
// the caller's goroutine.
func (e *Engine) SaveWarm(ctx context.Context) error {
	if e.cfg.WarmFile == "" || e.cfg.NoKVReuse {
		return nil
	}
	got := make(chan warmSnapshot, 1)
	select {
	case e.ctl <- func(kv *kvState, slots []*slot) {
		start := time.Now()
		snap := e.snapshotWarm(kv, slots)
		snap.held = time.Since(start) // the engine decoded nothing meanwhile
		got <- snap
	}:
	case <-e.done:
		return backends.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select { // an idle scheduler waits for a wake-up
	case e.wake <- struct{}{}:
	default:
	}
	select {
	case snap := <-got:
		return e.writeSnapshot(snap)
	case <-e.done:
		return backends.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// warmSnapshot is a copy of the caches the sequences held at one moment.
type warmSnapshot struct {
	seq       int64 // orders snapshots: an older one never replaces a newer file
	recs      []kvstate.Record
	err       error
	print     uint64        // warmOrder's fingerprint
	unchanged bool          // the file holds these caches already: nothing copied, nothing to write
	held      time.Duration // how long taking it held the scheduler
}

// warmOrder is the sequences that hold a cache, most recently used first
// (a running one first of all), and a fingerprint of their tokens in that
// order: two moments with the same fingerprint hold the same caches.
func warmOrder(kv *kvState, slots []*slot) ([]int, uint64) {
	last := func(i int) int64 {
		if slots[i] != nil {
			return math.MaxInt64
		}
		return kv.used[i]
	}
	order := make([]int, 0, len(kv.held))
	for i, held := range kv.held {
		if len(held) > 0 {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(last(b), last(a)) })
	h := fnv.New64a()
	var b [4]byte
	for _, i := range order {
		binary.LittleEndian.PutUint32(b[:], uint32(len(kv.held[i])))
		h.Write(b[:])
		for _, t := range kv.held[i] {
			binary.LittleEndian.PutUint32(b[:], uint32(t))
			h.Write(b[:])
		}
	}
	return order, h.Sum64()
}

// notePrint records that the warm file holds what kv holds (just loaded).
func (e *Engine) notePrint(kv *kvState) {
	_, p := warmOrder(kv, make([]*slot, len(kv.held)))
	e.warmPrint.Store(p)
	e.warmPrinted.Store(true)
}

// snapshotWarm copies the caches of the sequences, most recently used
// first (a running one first of all), as many as Config.WarmBudget holds.
// It runs where nothing decodes: on the scheduler goroutine between two
// steps, or after it stopped (slots all nil).
func (e *Engine) snapshotWarm(kv *kvState, slots []*slot) warmSnapshot {
	snap := warmSnapshot{seq: e.warmSeq.Add(1)}
	var order []int
	order, snap.print = warmOrder(kv, slots)
	if e.warmPrinted.Load() && snap.print == e.warmPrint.Load() {
		snap.unchanged = true // a periodic save with nothing new: no copies
		return snap
	}
	size := int64(64)
	for _, i := range order {
		held := kv.held[i]
		// A decode aborted by Close may have left cells past what a free
		// sequence is known to hold; a running one holds exactly its
		// tokens between two steps.
		if slots[i] == nil {
			if ok, err := e.nctx.TrimSequence(i, len(held)); err != nil || !ok {
				continue
			}
		}
		n, err := e.nctx.SequenceStateSize(i)
		if err != nil {
			snap.err = err
			return snap
		}
		rec := int64(16 + 4*len(held) + n)
		if n == 0 || (e.cfg.WarmBudget > 0 && size+rec > e.cfg.WarmBudget) {
			continue
		}
		state, err := e.nctx.SequenceState(i)
		if err != nil {
			snap.err = err
			return snap
		}
		r := kvstate.Record{Tokens: make([]int32, len(held)), State: state}
		for j, t := range held {
			r.Tokens[j] = int32(t)
		}
		size += rec
		snap.recs = append(snap.recs, r)
	}
	return snap
}

// writeSnapshot writes snap to the warm file (removing the file when it
// holds nothing), unless a newer snapshot was written already; it logs
// the outcome.
func (e *Engine) writeSnapshot(snap warmSnapshot) error {
	e.warmMu.Lock()
	defer e.warmMu.Unlock()
	log := e.cfg.Logger.With("file", e.cfg.WarmFile)
	if snap.seq <= e.warmWritten {
		return nil
	}
	if snap.unchanged && snap.err == nil {
		log.Debug("warm cache unchanged: not saved", "held", snap.held)
		return nil
	}
	start := time.Now()
	size, err := e.writeWarm(snap)
	if err != nil {
		log.Warn("warm cache not saved", "err", err)
		return err
	}
	e.warmWritten = snap.seq
	e.warmPrint.Store(snap.print)
	e.warmPrinted.Store(true)
	log.Info("warm cache saved", "sequences", len(snap.recs), "bytes", size, "ms", time.Since(start).Milliseconds(),
		"held", snap.held.Round(time.Microsecond))
	return nil
}

func (e *Engine) writeWarm(snap warmSnapshot) (int64, error) {
	if snap.err != nil {
		return 0, snap.err
	}
	h, err := e.warmHeader()
	if err != nil {
		return 0, err
	}
	if len(snap.recs) == 0 {
		if err := os.Remove(e.cfg.WarmFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		return 0, nil
	}
	h.Records = uint32(len(snap.recs))
	size := int64(64)
	for _, r := range snap.recs {
		size += r.Size()
	}
	// A new file renamed over the old one: a crash while writing leaves
	// the old file or the new one, never half of either.
	dir := filepath.Dir(e.cfg.WarmFile)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(e.cfg.WarmFile)+".*.tmp")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	err = writeRecords(bw, h, snap.recs)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), e.cfg.WarmFile)
	}
	return size, err
}

func writeRecords(w io.Writer, h kvstate.Header, recs []kvstate.Record) error {
	wr, err := kvstate.NewWriter(w, h)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if err := wr.Add(r); err != nil {
			return err
		}
	}
	return wr.Close()
}
