// Package kvstate frames the in-process engine's warm cache file: the KV
// state of its sequences (llama.cpp's per-sequence state, opaque here) with
// the tokens each holds, saved at shutdown and loaded at start so that a
// restarted daemon answers an old conversation's next turn without
// evaluating its history again (docs/caching.md).
//
// The file is ours; llama.cpp's bytes inside it are trusted only after the
// framing checked them: llama.cpp asserts (aborting the process) on some
// inconsistent state, so nothing reaches it from a file that is corrupt,
// truncated, of another version, or written for another model, build or
// context layout. The package is pure Go, so its decoder fuzzes without
// cgo.
//
// Layout, little-endian:
//
//	header (64 bytes)
//	  0  magic "MCPDKVC\x00"
//	  8  version u16 (1)
//	 10  flags u16 (0; any other value is refused)
//	 12  records u32
//	 16  identity [32]byte: the model file and engine build (Identity)
//	 48  sequences u32, sequence context u32: the KV cache's layout
//	 56  reserved u32 (0)
//	 60  CRC-32C (Castagnoli) of bytes 0..59
//	records, most recently used first, each:
//	  tokens n u32, state length m u64,
//	  n tokens i32, m bytes of llama.cpp sequence state,
//	  CRC-32C of the record's bytes before it (u32)
//	nothing after the last record.
package kvstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"github.com/mcpd-project/mcpd/internal/stateheader"
)

// Magic starts every warm cache file.
const Magic = "MCPDKVC\x00"

// Version is the layout this package writes and reads.
const Version = 1

const headerSize = stateheader.Size

// MaxSequences and MaxTokens bound what a header or record may claim, so a
// corrupt count cannot make the reader allocate without bound before its
// CRC is checked (llama.cpp contexts have at most 256 sequences).
const (
	MaxSequences = 256
	MaxTokens    = 1 << 20
)

// Errors a Reader returns, wrapped with details.
var (
	ErrMagic     = errors.New("not a warm cache file")
	ErrVersion   = errors.New("unsupported warm cache version")
	ErrIdentity  = errors.New("warm cache written for another model or engine build")
	ErrLayout    = errors.New("warm cache written for another KV cache layout")
	ErrCorrupt   = errors.New("warm cache corrupt")
	ErrTruncated = errors.New("warm cache truncated")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header says what the file holds and what it was written for.
type Header struct {
	Identity [32]byte
	// Sequences and SequenceContext are the KV cache's layout: llama.cpp
	// restores a sequence's state only into a cache of the same shape.
	Sequences, SequenceContext uint32
	// Records is the number of records that follow.
	Records uint32
}

// Record is one sequence's cache: the tokens at positions 0..len-1 and
// llama.cpp's state of those positions.
type Record struct {
	Tokens []int32
	State  []byte
}

// Size is the bytes rec takes in a file.
func (rec Record) Size() int64 { return 16 + 4*int64(len(rec.Tokens)) + int64(len(rec.State)) }

func (h Header) check() error {
	switch {
	case h.Sequences == 0 || h.Sequences > MaxSequences:
		return fmt.Errorf("%w: %d sequences", ErrCorrupt, h.Sequences)
	case h.SequenceContext == 0 || h.SequenceContext > MaxTokens:
		return fmt.Errorf("%w: sequence context %d", ErrCorrupt, h.SequenceContext)
	case h.Records > h.Sequences:
		return fmt.Errorf("%w: %d records for %d sequences", ErrCorrupt, h.Records, h.Sequences)
	}
	return nil
}

func (h Header) encode() []byte {
	own := h.own()
	return stateheader.Encode(Magic, Version, stateheader.Header{Records: h.Records, Identity: h.Identity, Own: own})
}

// own is the header's bytes of this format: the layout, then 4 reserved.
func (h Header) own() (b [12]byte) {
	binary.LittleEndian.PutUint32(b[0:], h.Sequences)
	binary.LittleEndian.PutUint32(b[4:], h.SequenceContext)
	return b
}

var headerErrors = stateheader.Errors{Magic: ErrMagic, Version: ErrVersion, Corrupt: ErrCorrupt, Truncated: ErrTruncated}

// Writer writes a warm cache file: the header, then exactly h.Records
// records.
type Writer struct {
	w       io.Writer
	h       Header
	written uint32
}

// NewWriter writes h to w.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	if _, err := w.Write(h.encode()); err != nil {
		return nil, fmt.Errorf("warm cache header: %w", err)
	}
	return &Writer{w: w, h: h}, nil
}

// Add writes the next record.
func (wr *Writer) Add(rec Record) error {
	if wr.written >= wr.h.Records {
		return fmt.Errorf("warm cache: record %d of %d", wr.written+1, wr.h.Records)
	}
	if len(rec.Tokens) == 0 || len(rec.Tokens) > int(wr.h.SequenceContext) || len(rec.State) == 0 {
		return fmt.Errorf("warm cache: record of %d tokens, %d state bytes (context %d)",
			len(rec.Tokens), len(rec.State), wr.h.SequenceContext)
	}
	crc := crc32.New(castagnoli)
	out := io.MultiWriter(wr.w, crc)
	var head [12]byte
	binary.LittleEndian.PutUint32(head[:], uint32(len(rec.Tokens)))
	binary.LittleEndian.PutUint64(head[4:], uint64(len(rec.State)))
	toks := make([]byte, 4*len(rec.Tokens))
	for i, t := range rec.Tokens {
		binary.LittleEndian.PutUint32(toks[4*i:], uint32(t))
	}
	for _, part := range [][]byte{head[:], toks, rec.State} {
		if _, err := out.Write(part); err != nil {
			return fmt.Errorf("warm cache record: %w", err)
		}
	}
	if _, err := wr.w.Write(binary.LittleEndian.AppendUint32(nil, crc.Sum32())); err != nil {
		return fmt.Errorf("warm cache record: %w", err)
	}
	wr.written++
	return nil
}

// Close checks that every record announced was written.
func (wr *Writer) Close() error {
	if wr.written != wr.h.Records {
		return fmt.Errorf("warm cache: %d of %d records written", wr.written, wr.h.Records)
	}
	return nil
}

// Reader reads a warm cache file record by record; every record is checked
// (lengths, CRC) before Next returns it.
type Reader struct {
	r       io.Reader
	left    int64 // bytes of the file not yet read
	h       Header
	read    uint32
	crc     hash.Hash32
	scratch []byte
}

// NewReader reads and checks the header of a file of size bytes: it must
// be this version's, for the identity and layout of want (whose Records
// is ignored).
func NewReader(r io.Reader, size int64, want Header) (*Reader, error) {
	sh, err := stateheader.Read(r, size, Magic, Version, headerErrors)
	if err != nil {
		return nil, err
	}
	if binary.LittleEndian.Uint32(sh.Own[8:]) != 0 {
		return nil, fmt.Errorf("%w: reserved field set", ErrVersion)
	}
	h := Header{Records: sh.Records, Identity: sh.Identity,
		Sequences: binary.LittleEndian.Uint32(sh.Own[0:]), SequenceContext: binary.LittleEndian.Uint32(sh.Own[4:])}
	if err := h.check(); err != nil {
		return nil, err
	}
	if h.Identity != want.Identity {
		return nil, ErrIdentity
	}
	if h.Sequences != want.Sequences || h.SequenceContext != want.SequenceContext {
		return nil, fmt.Errorf("%w: %d sequences of %d tokens, the engine has %d of %d", ErrLayout,
			h.Sequences, h.SequenceContext, want.Sequences, want.SequenceContext)
	}
	return &Reader{r: r, left: size - stateheader.Size, h: h, crc: crc32.New(castagnoli)}, nil
}

// Header is the file's header.
func (rd *Reader) Header() Header { return rd.h }

// Next returns the next record, io.EOF after the last one (when the file
// ends exactly there). The record's memory is its own.
func (rd *Reader) Next() (Record, error) {
	if rd.read == rd.h.Records {
		if rd.left != 0 {
			return Record{}, fmt.Errorf("%w: %d bytes after the last record", ErrCorrupt, rd.left)
		}
		return Record{}, io.EOF
	}
	rd.crc.Reset()
	head, err := rd.take(12, true)
	if err != nil {
		return Record{}, err
	}
	n := binary.LittleEndian.Uint32(head)
	m := binary.LittleEndian.Uint64(head[4:])
	if n == 0 || n > rd.h.SequenceContext {
		return Record{}, fmt.Errorf("%w: record %d holds %d tokens (context %d)", ErrCorrupt, rd.read, n, rd.h.SequenceContext)
	}
	// The state must fit in what is left of the file, so a corrupt length
	// cannot make us allocate more than the file's size.
	if m == 0 || m > uint64(rd.left) || 4*int64(n)+int64(m)+4 > rd.left {
		return Record{}, fmt.Errorf("%w: record %d claims %d tokens and %d state bytes, %d left", ErrTruncated,
			rd.read, n, m, rd.left)
	}
	toks, err := rd.take(4*int64(n), true)
	if err != nil {
		return Record{}, err
	}
	rec := Record{Tokens: make([]int32, n)}
	for i := range rec.Tokens {
		rec.Tokens[i] = int32(binary.LittleEndian.Uint32(toks[4*i:]))
	}
	rec.State = make([]byte, m)
	if _, err := io.ReadFull(rd.r, rec.State); err != nil {
		return Record{}, fmt.Errorf("%w: record %d state: %w", ErrTruncated, rd.read, err)
	}
	rd.left -= int64(m)
	rd.crc.Write(rec.State)
	sum := rd.crc.Sum32()
	tail, err := rd.take(4, false)
	if err != nil {
		return Record{}, err
	}
	if binary.LittleEndian.Uint32(tail) != sum {
		return Record{}, fmt.Errorf("%w: record %d CRC", ErrCorrupt, rd.read)
	}
	rd.read++
	return rec, nil
}

// take reads k framing bytes into the reader's scratch buffer, adding them
// to the record's CRC when sum is true.
func (rd *Reader) take(k int64, sum bool) ([]byte, error) {
	if k > rd.left {
		return nil, fmt.Errorf("%w: record %d", ErrTruncated, rd.read)
	}
	if int64(cap(rd.scratch)) < k {
		rd.scratch = make([]byte, k)
	}
	b := rd.scratch[:k]
	if _, err := io.ReadFull(rd.r, b); err != nil {
		return nil, fmt.Errorf("%w: record %d: %w", ErrTruncated, rd.read, err)
	}
	rd.left -= k
	if sum {
		rd.crc.Write(b)
	}
	return b, nil
}
