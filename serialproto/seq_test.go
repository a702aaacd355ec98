package serialproto

import (
	"math/rand/v2"
	"testing"
)

// TestSeqHistoryOldCopy is the case an independent implementation caught:
// 40 requests into a session, a byte-identical copy of the 2nd arrives.
// Its seq is neither remembered nor after the newest: stale, never new.
func TestSeqHistoryOldCopy(t *testing.T) {
	h := NewSeqHistory(0) // the HELLO's
	for seq := uint8(1); seq <= 40; seq++ {
		if got := h.Classify(seq); got != SeqNew {
			t.Fatalf("request %d: %v, want new", seq, got)
		}
		h.Take(seq)
	}
	for _, tc := range []struct {
		seq  uint8
		want SeqState
	}{
		{2, SeqStale}, {8, SeqStale}, // 38 and 32 behind the newest
		{9, SeqDuplicate}, {40, SeqDuplicate}, // inside the history
		{41, SeqNew}, {40 + 127, SeqNew}, // after the newest
		{40 + 128, SeqStale}, // 128 behind: "before" in 8 bits
		{0, SeqStale},        // the HELLO, long ago
	} {
		if got := h.Classify(tc.seq); got != tc.want {
			t.Errorf("seq %d after 40 requests: %v, want %v", tc.seq, got, tc.want)
		}
	}
}

// TestSeqHistoryReorderedAndRefused: a request overtaken by a later one is
// still new (it is inside the history and not taken), and so is one that
// advanced the history but was refused and not taken — its retransmission
// is judged again. Across the wrap, 255 follows 0's predecessor.
func TestSeqHistoryReorderedAndRefused(t *testing.T) {
	h := NewSeqHistory(250)
	h.Take(252) // 251 overtaken
	if got := h.Classify(251); got != SeqNew {
		t.Fatalf("overtaken 251: %v", got)
	}
	h.Take(251)
	if !h.Advance(3) || h.Newest() != 3 { // across the wrap; not taken (refused)
		t.Fatal("3 did not advance the history past 252")
	}
	for _, tc := range []struct {
		seq  uint8
		want SeqState
	}{{3, SeqNew}, {251, SeqDuplicate}, {252, SeqDuplicate}, {250, SeqDuplicate}, {253, SeqNew}, {4, SeqNew}} {
		if got := h.Classify(tc.seq); got != tc.want {
			t.Errorf("seq %d: %v, want %v", tc.seq, got, tc.want)
		}
	}
	if h.Advance(1) {
		t.Error("1 is before the newest 3: it must not advance")
	}
	h.Take(3)
	if got := h.Classify(3); got != SeqDuplicate {
		t.Errorf("taken 3: %v", got)
	}
}

// TestSeqHistoryAgainstReference checks Classify against the rule written
// out on absolute request numbers: a device numbers its requests 0, 1, 2…
// and sends each number's low 8 bits; copies arrive late, up to 127
// requests late (beyond that 8 bits cannot tell them from new ones).
func TestSeqHistoryAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	h := NewSeqHistory(0)
	newest := 0 // absolute
	taken := map[int]bool{0: true}
	for range 200000 {
		var a int
		switch r := rng.IntN(10); {
		case r < 4: // the next few requests, some overtaking others
			a = newest + 1 + rng.IntN(4)
		default: // a late copy, or a request the network held back
			a = max(newest-rng.IntN(128), 0)
		}
		want := SeqNew
		switch {
		case a > newest:
		case newest-a >= SeqHistoryLen:
			want = SeqStale
		case taken[a]:
			want = SeqDuplicate
		}
		seq := uint8(a)
		if got := h.Classify(seq); got != want {
			t.Fatalf("request %d (seq %d), newest %d: %v, want %v", a, seq, newest, got, want)
		}
		if want == SeqStale {
			continue
		}
		newest = max(newest, a)
		if rng.IntN(5) == 0 {
			h.Advance(seq) // refused: seen, not taken
		} else {
			h.Take(seq)
			taken[a] = true
		}
		if int(h.Newest()) != newest%256 {
			t.Fatalf("newest %d, want %d", h.Newest(), newest%256)
		}
	}
}
