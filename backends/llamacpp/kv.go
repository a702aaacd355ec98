package llamacpp

import (
	"github.com/mcpd-project/mcpd/native"
)

// kvState is what each sequence's KV cache holds, kept by the scheduler
// between requests: a device's next turn sends the whole conversation
// again, and the sequence that served the last turn already holds all of
// it but the new message, so only the new tokens are evaluated.
type kvState struct {
	held [][]native.Token // per sequence: the tokens at positions 0..len-1
	used []int64          // per sequence: the step count when its last request ended (LRU)
}

func newKVState(n int) *kvState {
	return &kvState{held: make([][]native.Token, n), used: make([]int64, n)}
}

// copyCost is what copying a sequence's cells to another costs, counted in
// prompt tokens evaluated. llama.cpp copies between sequences with their
// own cells only whole (SequenceContext positions of K and V per layer: a
// memory copy of tens of MB on a 135M model), while evaluating a token of
// prompt reads every weight once per batch and computes on it; on the
// 2-core reference VM the copy cost about as much as 16 prompt tokens.
const copyCost = 16

// commonPrefix is the length of the longest common prefix of a and b.
func commonPrefix(a, b []native.Token) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// place picks the free sequence for a new request and prepares its KV
// cache; it returns the sequence and how many prompt tokens it already
// holds (at most len(prompt)-1: the last one is evaluated again for its
// logits). The choice minimises the prompt tokens to evaluate plus the
// cached tokens of other conversations thrown away:
//
//   - in place: a free sequence keeps the part of its cache the prompt
//     starts with (the same conversation's earlier turns) and drops the
//     rest;
//   - copied: the least recently used free sequence (an empty one first)
//     gets a copy of the cache of whichever sequence — running or not —
//     shares the longest prefix with the prompt (the system prompt of
//     another device's conversation), and drops the rest.
//
// Whatever a sequence drops is evaluated again when its conversation comes
// back: the device sees only the time.
func (e *Engine) place(kv *kvState, slots []*slot, prompt []native.Token) (seq, reuse int) {
	seq, reuse = e.choose(kv, slots, prompt)
	if reuse > 0 {
		e.kvHits.Add(1)
	} else {
		e.kvMisses.Add(1)
	}
	e.keepBudget(kv, slots, seq)
	return seq, reuse
}

// choose is place's choice of sequence and its preparation.
func (e *Engine) choose(kv *kvState, slots []*slot, prompt []native.Token) (seq, reuse int) {
	usable := func(held []native.Token) int {
		return min(commonPrefix(held, prompt), len(prompt)-1)
	}
	victim, bestCost, inPlace := -1, 0, -1
	for i, s := range slots {
		if s != nil {
			continue
		}
		if victim < 0 || older(kv, i, victim) {
			victim = i
		}
		if e.cfg.NoKVReuse {
			continue
		}
		l := usable(kv.held[i])
		if cost := (len(prompt) - l) + (len(kv.held[i]) - l); inPlace < 0 || cost < bestCost {
			inPlace, bestCost, reuse = i, cost, l
		}
	}
	if e.cfg.NoKVReuse {
		e.trim(kv, victim, 0)
		return victim, 0
	}
	src, srcLen := -1, 0
	for j := range kv.held {
		if j == victim {
			continue
		}
		if l := usable(kv.held[j]); l > srcLen {
			src, srcLen = j, l
		}
	}
	if src >= 0 {
		if cost := (len(prompt) - srcLen) + len(kv.held[victim]) + copyCost; cost < bestCost {
			if err := e.nctx.CopySequence(src, victim); err == nil {
				e.kvCopies.Add(1)
				e.kvDropped.Add(int64(len(kv.held[victim])))
				kv.held[victim] = append(kv.held[victim][:0], kv.held[src][:srcLen]...)
				if ok, err := e.nctx.TrimSequence(victim, srcLen); err == nil && ok {
					return victim, srcLen
				}
				kv.held[victim] = kv.held[victim][:0]
				if err := e.nctx.ClearSequence(victim); err != nil {
					e.cfg.Logger.Warn("clearing a sequence failed", "seq", victim, "err", err)
				}
				return victim, 0
			}
		}
	}
	return inPlace, e.trim(kv, inPlace, reuse)
}

// keepBudget accounts the caches that sequences keep between requests
// (free ones; busy, about to run, is not) in the shared Config.Budget and,
// while it is over its limit, clears the least recently used of them. The
// cells are llama.cpp's from the start, so this bounds how many
// conversations stay warm (and what the warm file holds) for the sake of
// the response cache and the other caches sharing the budget.
func (e *Engine) keepBudget(kv *kvState, slots []*slot, busy int) {
	held := func() int64 {
		n := 0
		for i, h := range kv.held {
			if slots[i] == nil && i != busy {
				n += len(h)
			}
		}
		return int64(n) * e.kvTokenBytes
	}
	b := e.cfg.Budget
	for {
		now := held()
		if b != nil {
			b.Add(now - e.kvAccounted)
		}
		e.kvAccounted = now
		e.kvBytes.Store(now)
		if b == nil || !b.Over(0) {
			return
		}
		victim := -1
		for i, h := range kv.held {
			if slots[i] == nil && i != busy && len(h) > 0 && (victim < 0 || kv.used[i] < kv.used[victim]) {
				victim = i
			}
		}
		if victim < 0 {
			return
		}
		e.kvEvictions.Add(1)
		e.trim(kv, victim, 0)
	}
}

// older orders free sequences for reuse: empty ones first, then the least
// recently used.
func older(kv *kvState, i, j int) bool {
	if ei, ej := len(kv.held[i]) == 0, len(kv.held[j]) == 0; ei != ej {
		return ei
	}
	return kv.used[i] < kv.used[j]
}

// trim cuts sequence seq's cache to its first keep tokens, clearing it
// when llama.cpp cannot cut it there; it returns what is kept.
func (e *Engine) trim(kv *kvState, seq, keep int) int {
	held := kv.held[seq]
	if keep >= len(held) {
		return len(held)
	}
	kept := 0
	if ok, err := e.nctx.TrimSequence(seq, keep); err == nil && ok {
		kept = keep
	} else if err := e.nctx.ClearSequence(seq); err != nil {
		e.cfg.Logger.Warn("clearing a sequence failed", "seq", seq, "err", err)
	}
	e.kvDropped.Add(int64(len(held) - kept))
	kv.held[seq] = held[:kept]
	return kept
}
