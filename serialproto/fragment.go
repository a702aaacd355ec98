package serialproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Errors of fragmentation and reassembly (docs/protocol.md §6).
var (
	ErrTooLarge     = errors.New("serialproto: message exceeds the size limit")
	ErrBadChecksum  = errors.New("serialproto: message CRC-32C mismatch")
	ErrBusy         = errors.New("serialproto: too many messages in reassembly")
	ErrDuplicate    = errors.New("serialproto: fragment of a message already reassembled")
	ErrNotFragment  = errors.New("serialproto: frame is not a fragment")
	ErrBadPieceSize = errors.New("serialproto: piece size must be 1..254")
)

// Fragmentation constants.
const (
	FragmentHeaderLen = 2
	SignatureLen      = 15 // link id, 48-bit counter, 8-byte tag
	MaxFragments      = 255
	CRC32CLen         = 4
	// DefaultMaxMessage is the daemon's default limit on a message body.
	DefaultMaxMessage = 16 * 1024
	// MaxMessageLimit is the largest body fragmentation can carry:
	// 255 fragments of 254 bytes, less the CRC-32C.
	MaxMessageLimit = MaxFragments*(MaxData-FragmentHeaderLen) - CRC32CLen
)

// PieceSize is the largest piece P a fragment can carry to a receiver that
// accepts maxData bytes of data: maxData − 2, and − 15 more when signed.
func PieceSize(maxData int, signed bool) int {
	p := min(maxData, MaxData) - FragmentHeaderLen
	if signed {
		p -= SignatureLen
	}
	return p
}

// BodyLimit is the largest body a single-frame command may carry.
func BodyLimit(maxData int, signed bool) int {
	n := min(maxData, MaxData)
	if signed {
		n -= SignatureLen
	}
	return n
}

// Fragments cuts a message body (an INFER's) into the data fields of the
// frames that carry it (docs/protocol.md §6): each starts with the fragment
// header, the pieces of at most pieceSize bytes (use PieceSize) carry
// body ‖ CRC-32C(body), and every frame gets FlagFragment — even when the
// message is a single fragment, so every prompt is guarded by the CRC-32C.
// The result shares one allocation.
func Fragments(body []byte, pieceSize int) ([][]byte, error) {
	if pieceSize < 1 || pieceSize > MaxData-FragmentHeaderLen {
		return nil, fmt.Errorf("%w: %d", ErrBadPieceSize, pieceSize)
	}
	total := len(body) + CRC32CLen
	count := (total + pieceSize - 1) / pieceSize
	if count > MaxFragments {
		return nil, fmt.Errorf("%w: %d bytes need %d fragments of %d, at most %d",
			ErrTooLarge, len(body), count, pieceSize, MaxFragments)
	}
	whole := make([]byte, 0, total)
	whole = binary.BigEndian.AppendUint32(append(whole, body...), CRC32C(body))
	buf := make([]byte, 0, total+count*FragmentHeaderLen)
	datas := make([][]byte, count)
	for i := range count {
		piece := whole[i*pieceSize : min((i+1)*pieceSize, total)]
		start := len(buf)
		buf = append(append(buf, byte(i), byte(count)), piece...)
		datas[i] = buf[start:len(buf):len(buf)]
	}
	return datas, nil
}

// ReassemblerConfig bounds a Reassembler. Zero fields take the defaults.
type ReassemblerConfig struct {
	MaxMessage int           // largest body; default 16 KiB, at most MaxMessageLimit
	MaxPending int           // messages in reassembly at once; default 2
	Timeout    time.Duration // discard a message without progress; default 10 s
}

type fragKey struct {
	cmd Command
	seq uint8
}

type pending struct {
	count     int
	pieceSize int // 0 until a non-last piece arrives
	have      int
	pieces    [][]byte
	last      time.Time // last progress
}

// forgotten marks a cleared slot of the done ring: no frame can carry
// command 0xFF (commands are six bits).
var forgotten = fragKey{cmd: 0xFF}

// recentDone is how many reassembled messages a Reassembler remembers so a
// late duplicate fragment is recognised instead of starting a new message.
const recentDone = 8

// Reassembler joins fragments into messages. It keeps bounded state, uses
// the caller's clock and starts no goroutines; one per session.
type Reassembler struct {
	cfg     ReassemblerConfig
	pending map[fragKey]*pending
	done    [recentDone]fragKey
	nDone   int
}

// NewReassembler returns a Reassembler with cfg's bounds.
func NewReassembler(cfg ReassemblerConfig) *Reassembler {
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = DefaultMaxMessage
	}
	cfg.MaxMessage = min(cfg.MaxMessage, MaxMessageLimit)
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 2
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Reassembler{cfg: cfg, pending: make(map[fragKey]*pending)}
}

// Pending is the number of messages in reassembly.
func (r *Reassembler) Pending() int { return len(r.pending) }

// Add takes the data field of one fragment (signature block removed) of the
// message (cmd, seq). It returns:
//   - body != nil: the message is complete and its CRC-32C sound; body is
//     the caller's, without the checksum;
//   - missing != nil: the last fragment is in but these indexes are not
//     (answer NACK MISSING);
//   - both nil: more fragments are needed;
//   - an error: ErrDuplicate (a late copy of a finished message: answer with
//     its ACK again), ErrBusy (not stored), or ErrMalformed, ErrTooLarge,
//     ErrBadChecksum, after which the message is discarded.
func (r *Reassembler) Add(now time.Time, cmd Command, seq uint8, data []byte) (body, missing []byte, err error) {
	key := fragKey{cmd, seq}
	if len(data) < FragmentHeaderLen+1 {
		r.drop(key)
		return nil, nil, malformed(cmd, "fragment of %d bytes", len(data))
	}
	index, count, piece := int(data[0]), int(data[1]), data[2:]
	if count == 0 || index >= count {
		r.drop(key)
		return nil, nil, malformed(cmd, "fragment %d of %d", index, count)
	}
	p := r.pending[key]
	if p == nil {
		if r.recentlyDone(key) {
			return nil, nil, ErrDuplicate
		}
		if len(r.pending) >= r.cfg.MaxPending {
			return nil, nil, ErrBusy
		}
		p = &pending{count: count, pieces: make([][]byte, count)}
		r.pending[key] = p
	}
	if count != p.count {
		r.drop(key)
		return nil, nil, malformed(cmd, "fragment count changed from %d to %d", p.count, count)
	}
	isLast := index == count-1
	if !isLast {
		if p.pieceSize == 0 {
			p.pieceSize = len(piece)
		} else if len(piece) != p.pieceSize {
			r.drop(key)
			return nil, nil, malformed(cmd, "piece %d has %d bytes, others %d", index, len(piece), p.pieceSize)
		}
		// The smallest body these pieces can make must fit the limit.
		if (count-1)*p.pieceSize+1-CRC32CLen > r.cfg.MaxMessage {
			r.drop(key)
			return nil, nil, fmt.Errorf("%w: %d fragments of %d bytes, limit %d", ErrTooLarge, count, p.pieceSize, r.cfg.MaxMessage)
		}
	}
	if p.pieces[index] == nil {
		p.pieces[index] = append([]byte(nil), piece...)
		p.have++
		p.last = now
	}
	if lp := p.pieces[count-1]; p.pieceSize != 0 && lp != nil && len(lp) > p.pieceSize {
		r.drop(key)
		return nil, nil, malformed(cmd, "last piece larger than the others")
	}
	if p.have < count {
		if isLast {
			return nil, r.missing(p), nil
		}
		return nil, nil, nil
	}
	return r.finish(key, p)
}

func (r *Reassembler) finish(key fragKey, p *pending) ([]byte, []byte, error) {
	r.drop(key)
	size := 0
	for _, pc := range p.pieces {
		size += len(pc)
	}
	if size < CRC32CLen {
		return nil, nil, malformed(key.cmd, "message of %d bytes cannot hold its checksum", size)
	}
	whole := make([]byte, 0, size)
	for _, pc := range p.pieces {
		whole = append(whole, pc...)
	}
	body, sum := whole[:size-CRC32CLen], binary.BigEndian.Uint32(whole[size-CRC32CLen:])
	if len(body) > r.cfg.MaxMessage {
		return nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), r.cfg.MaxMessage)
	}
	if CRC32C(body) != sum {
		return nil, nil, ErrBadChecksum
	}
	r.done[r.nDone%recentDone] = key
	r.nDone++
	return body, nil, nil
}

// Missing lists the fragment indexes (at most 64, ascending) still missing
// from the message (cmd, seq), or nil if none is pending.
func (r *Reassembler) Missing(cmd Command, seq uint8) []byte {
	if p := r.pending[fragKey{cmd, seq}]; p != nil {
		return r.missing(p)
	}
	return nil
}

func (r *Reassembler) missing(p *pending) []byte {
	var out []byte
	for i, pc := range p.pieces {
		if pc == nil && len(out) < MaxNackIndexes {
			out = append(out, byte(i))
		}
	}
	return out
}

// Partial describes the message (cmd, seq) in reassembly: its fragment
// count and whether its fragment 0 is in; count is 0 when none is pending.
// A receiver whose messages under one key follow each other (TOOL_RESULTs
// of one request, §16) tells with it a late copy of an earlier message's
// fragment from the next message.
func (r *Reassembler) Partial(cmd Command, seq uint8) (count int, first bool) {
	if p := r.pending[fragKey{cmd, seq}]; p != nil {
		return p.count, p.pieces[0] != nil
	}
	return 0, false
}

// LastProgress is when a fragment of the message (cmd, seq) last added a
// piece; ok is false when no such message is in reassembly (complete,
// discarded, expired or never begun). A receiver NACKs the missing
// fragments once this lies half an RTO back (§6).
func (r *Reassembler) LastProgress(cmd Command, seq uint8) (last time.Time, ok bool) {
	if p := r.pending[fragKey{cmd, seq}]; p != nil {
		return p.last, true
	}
	return time.Time{}, false
}

// Expire discards messages without progress for the timeout and returns how
// many it discarded.
func (r *Reassembler) Expire(now time.Time) int {
	n := 0
	for k, p := range r.pending {
		if now.Sub(p.last) >= r.cfg.Timeout {
			delete(r.pending, k)
			n++
		}
	}
	return n
}

// Forget drops any state of (cmd, seq), pending or finished: the session
// reuses the seq for a new message.
func (r *Reassembler) Forget(cmd Command, seq uint8) {
	key := fragKey{cmd, seq}
	r.drop(key)
	for i := range r.done {
		if r.done[i] == key {
			r.done[i] = forgotten
		}
	}
}

func (r *Reassembler) drop(key fragKey) { delete(r.pending, key) }

func (r *Reassembler) recentlyDone(key fragKey) bool {
	for i := range min(r.nDone, recentDone) {
		if r.done[i] == key {
			return true
		}
	}
	return false
}
