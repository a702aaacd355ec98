package serialproto

// SeqAfter reports whether a is after b in 8-bit serial-number arithmetic
// (RFC 1982): (a − b) mod 256 is in 1..127. docs/protocol.md §5.
func SeqAfter(a, b uint8) bool {
	d := a - b
	return d != 0 && d < 128
}

// SeqHistoryLen is how many request seqs a receiver remembers (§5): twice
// the 16 requests a device may have outstanding, so a live request is never
// behind the history, however the network reorders.
const SeqHistoryLen = 32

// SeqState is what a request's seq makes of it (§5).
type SeqState uint8

const (
	// SeqNew: after the newest seq, or within the history and not taken
	// yet (a request the network reordered, or one refused before, which a
	// retransmission puts to the receiver again): serve it.
	SeqNew SeqState = iota
	// SeqDuplicate: a request already taken: answer it again, never serve
	// it twice.
	SeqDuplicate
	// SeqStale: behind the history, so neither new nor known: ERROR
	// UNEXPECTED. A delayed copy of an old request ends here — as long as
	// it is fewer than 128 requests late; later than that it is after the
	// newest in 8-bit arithmetic and nothing can tell it from a new one.
	SeqStale
)

func (s SeqState) String() string {
	switch s {
	case SeqNew:
		return "new"
	case SeqDuplicate:
		return "duplicate"
	case SeqStale:
		return "stale"
	}
	return "SeqState(?)"
}

// SeqHistory is a receiver's memory of one peer's request seqs (§5): the
// newest seq seen and which of the SeqHistoryLen seqs up to it were taken —
// the replay window of §9.2, on seqs instead of counters. One history serves
// every command that starts a request (HELLO, PING, INFER, STATUS, BYE),
// since they share the sender's counter. Not safe for concurrent use.
type SeqHistory struct {
	newest uint8
	taken  uint32 // bit i set: seq newest−i was taken
}

// NewSeqHistory starts a history at the session's first request, the
// HELLO's seq, taken.
func NewSeqHistory(first uint8) SeqHistory {
	return SeqHistory{newest: first, taken: 1}
}

// Newest is the newest seq seen.
func (h *SeqHistory) Newest() uint8 { return h.newest }

// Classify is the freshness rule of §5, for a request with seq: new (after
// the newest, or inside the history and not taken), a duplicate (taken),
// or stale (neither after the newest nor inside the history). It changes
// nothing.
func (h *SeqHistory) Classify(seq uint8) SeqState {
	if SeqAfter(seq, h.newest) {
		return SeqNew
	}
	back := h.newest - seq
	switch {
	case back >= SeqHistoryLen:
		return SeqStale
	case h.taken&(1<<back) != 0:
		return SeqDuplicate
	}
	return SeqNew
}

// Advance makes seq the newest if it is after the newest, sliding the
// history; it reports whether it did. A receiver advances on the first
// frame of a new request and takes it (Take) once the request is served or
// accepted: a refused one stays new for its retransmission.
func (h *SeqHistory) Advance(seq uint8) bool {
	if !SeqAfter(seq, h.newest) {
		return false
	}
	if d := seq - h.newest; d < SeqHistoryLen {
		h.taken <<= d
	} else {
		h.taken = 0
	}
	h.newest = seq
	return true
}

// Take records that the request seq was served (or accepted), so later
// copies of it are duplicates. It advances first; a stale seq is left out.
func (h *SeqHistory) Take(seq uint8) {
	h.Advance(seq)
	if back := h.newest - seq; back < SeqHistoryLen {
		h.taken |= 1 << back
	}
}
