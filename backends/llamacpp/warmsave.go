package llamacpp

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"io"
	"math"
	"os"
	"slices"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/kvstate"
	"github.com/mcpd-project/mcpd/internal/atomicfile"
)

// Saving the warm file (docs/caching.md): at Close, at a reload and every
// warm_save_interval (backends.WarmSaver). While the engine serves, the
// sequences' states are copied between decode steps, one sequence per
// step, so a save holds the scheduler for the largest sequence's copy
// rather than for all of them; the file is written on the caller's
// goroutine.

// saveWarm writes the sequences' caches to the warm file. Called once the
// scheduler has stopped and before the context is freed.
func (e *Engine) saveWarm() {
	if e.cfg.WarmFile == "" || e.cfg.NoKVReuse {
		return
	}
	e.writeSnapshot(e.snapshotWarm(e.kv, make([]*slot, len(e.kv.held))))
}

// SaveWarm implements backends.WarmSaver: the caches the sequences hold
// now go to the warm file while the engine serves, unless the file holds
// them already.
func (e *Engine) SaveWarm(ctx context.Context) error {
	if e.cfg.WarmFile == "" || e.cfg.NoKVReuse {
		return nil
	}
	snap, err := e.takeWarm(ctx)
	if err != nil {
		return err
	}
	return e.writeSnapshot(snap)
}

// takeWarm copies the sequences' caches for the warm file while the
// scheduler runs: their order and fingerprint between two steps, then
// each sequence's state between two later ones, as it is then (a running
// sequence holds exactly its decoded tokens between two steps; each
// record stands alone, so sequences copied at different steps make a
// sound file).
func (e *Engine) takeWarm(ctx context.Context) (warmSnapshot, error) {
	snap := warmSnapshot{seq: e.warmSeq.Add(1)}
	var order []int
	if err := e.onScheduler(ctx, &snap, func(kv *kvState, slots []*slot) {
		order, snap.print = warmOrder(kv, slots)
	}); err != nil {
		return snap, err
	}
	if e.warmPrinted.Load() && snap.print == e.warmPrint.Load() {
		snap.unchanged = true // a periodic save with nothing new: no copies
		return snap, nil
	}
	size := int64(64)
	for _, i := range order {
		var rec *kvstate.Record
		var cerr error
		if err := e.onScheduler(ctx, &snap, func(kv *kvState, slots []*slot) {
			rec, cerr = e.copySequence(kv, slots, i, size)
		}); err != nil {
			return snap, err
		}
		if cerr != nil {
			snap.err = cerr
			break
		}
		if rec != nil {
			size += rec.Size()
			snap.recs = append(snap.recs, *rec)
		}
	}
	return snap, nil
}

// onScheduler runs f on the scheduler goroutine between two decode steps
// and waits for it; snap.held keeps the longest time such a call held the
// scheduler, during which no request decodes.
func (e *Engine) onScheduler(ctx context.Context, snap *warmSnapshot, f func(*kvState, []*slot)) error {
	ran := make(chan time.Duration, 1)
	select {
	case e.ctl <- func(kv *kvState, slots []*slot) {
		start := time.Now()
		f(kv, slots)
		ran <- time.Since(start)
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
	case d := <-ran:
		snap.held = max(snap.held, d)
		return nil
	case <-e.done:
		return backends.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// warmSnapshot is a copy of the caches the sequences held.
type warmSnapshot struct {
	seq       int64 // orders snapshots: an older one never replaces a newer file
	recs      []kvstate.Record
	err       error
	print     uint64        // warmOrder's fingerprint
	unchanged bool          // the file holds these caches already: nothing copied, nothing to write
	held      time.Duration // the longest the scheduler was held for one step of taking it
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
// first, as many as Config.WarmBudget holds, all at once: after the
// scheduler stopped (slots all nil).
func (e *Engine) snapshotWarm(kv *kvState, slots []*slot) warmSnapshot {
	snap := warmSnapshot{seq: e.warmSeq.Add(1)}
	var order []int
	order, snap.print = warmOrder(kv, slots)
	if e.warmPrinted.Load() && snap.print == e.warmPrint.Load() {
		snap.unchanged = true
		return snap
	}
	size := int64(64)
	for _, i := range order {
		rec, err := e.copySequence(kv, slots, i, size)
		if err != nil {
			snap.err = err
			return snap
		}
		if rec != nil {
			size += rec.Size()
			snap.recs = append(snap.recs, *rec)
		}
	}
	return snap
}

// copySequence copies sequence i's cache as a record, nil when it holds
// none or the record does not fit in Config.WarmBudget after size bytes.
// It runs where nothing decodes.
func (e *Engine) copySequence(kv *kvState, slots []*slot, i int, size int64) (*kvstate.Record, error) {
	held := kv.held[i]
	if len(held) == 0 {
		return nil, nil
	}
	// A decode aborted by Close may have left cells past what a free
	// sequence is known to hold; a running one holds exactly its tokens
	// between two steps.
	if slots[i] == nil {
		if ok, err := e.nctx.TrimSequence(i, len(held)); err != nil || !ok {
			return nil, nil
		}
	}
	n, err := e.nctx.SequenceStateSize(i)
	if err != nil {
		return nil, err
	}
	if rec := int64(16 + 4*len(held) + n); n == 0 || (e.cfg.WarmBudget > 0 && size+rec > e.cfg.WarmBudget) {
		return nil, nil
	}
	state, err := e.nctx.SequenceState(i)
	if err != nil {
		return nil, err
	}
	r := kvstate.Record{Tokens: make([]int32, len(held)), State: state}
	for j, t := range held {
		r.Tokens[j] = int32(t)
	}
	return &r, nil
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
	return size, atomicfile.Write(e.cfg.WarmFile, func(w io.Writer) error { return writeRecords(w, h, snap.recs) })
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
