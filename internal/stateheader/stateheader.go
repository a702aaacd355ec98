// Package stateheader is the 64-byte header that starts each of mcpd's
// state files (the engine's warm cache, backends/kvstate; the devices'
// conversations, daemon/chatstate): which file it is, its version, how many
// records follow, what it was written for, 12 bytes of the format's own,
// and a CRC-32C over the rest. Each format keeps its own records and its
// own errors; this package only frames and checks what they share.
package stateheader

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// Size is the header's length in bytes.
const Size = 64

// Layout (little-endian): magic [0,8), version u16 [8,10), flags u16
// [10,12) (none defined: must be 0), records u32 [12,16), identity
// [16,48), the format's own [48,60), CRC-32C of [0,60) at [60,64).

// Header is what a state file's header says.
type Header struct {
	Records  uint32
	Identity [32]byte
	Own      [12]byte // the format's fields and reserved bytes
}

// Errors maps what can be wrong with a header to the format's own errors,
// so that a caller's errors.Is checks name its format.
type Errors struct {
	Magic, Version, Corrupt, Truncated error
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Encode is h's header for the format with magic (8 bytes) and version.
func Encode(magic string, version uint16, h Header) []byte {
	b := make([]byte, Size)
	copy(b, magic)
	binary.LittleEndian.PutUint16(b[8:], version)
	binary.LittleEndian.PutUint32(b[12:], h.Records)
	copy(b[16:48], h.Identity[:])
	copy(b[48:60], h.Own[:])
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

// Read reads and checks the header of a file of size bytes from r: the
// magic, this version, the CRC and no flags, in that order. Identity and
// the format's own bytes are the caller's to check.
func Read(r io.Reader, size int64, magic string, version uint16, errs Errors) (Header, error) {
	h, _, err := ReadVersions(r, size, magic, version, version, errs)
	return h, err
}

// ReadVersions is Read for a format that reads versions oldest..newest:
// it also returns the file's version.
func ReadVersions(r io.Reader, size int64, magic string, oldest, newest uint16, errs Errors) (Header, uint16, error) {
	if size < Size {
		return Header{}, 0, fmt.Errorf("%w: %d bytes", errs.Truncated, size)
	}
	b := make([]byte, Size)
	if _, err := io.ReadFull(r, b); err != nil {
		return Header{}, 0, fmt.Errorf("%w: header: %w", errs.Truncated, err)
	}
	v := binary.LittleEndian.Uint16(b[8:])
	switch {
	case string(b[:8]) != magic:
		return Header{}, 0, errs.Magic
	case v < oldest || v > newest:
		if oldest == newest {
			return Header{}, 0, fmt.Errorf("%w: %d (this build reads %d)", errs.Version, v, newest)
		}
		return Header{}, 0, fmt.Errorf("%w: %d (this build reads %d to %d)", errs.Version, v, oldest, newest)
	case binary.LittleEndian.Uint32(b[60:]) != crc32.Checksum(b[:60], castagnoli):
		return Header{}, 0, fmt.Errorf("%w: header CRC", errs.Corrupt)
	case binary.LittleEndian.Uint16(b[10:]) != 0:
		return Header{}, 0, fmt.Errorf("%w: flags %#x", errs.Version, binary.LittleEndian.Uint16(b[10:]))
	}
	var h Header
	h.Records = binary.LittleEndian.Uint32(b[12:])
	copy(h.Identity[:], b[16:48])
	copy(h.Own[:], b[48:60])
	return h, v, nil
}
