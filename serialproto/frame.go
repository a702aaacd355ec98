package serialproto

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants of MCPFrame (docs/protocol.md §2).
const (
	Magic          = 0x55 // first byte of every frame
	Version1       = 1    // the only version this package speaks
	HeaderLen      = 6    // magic, version, length (2), cmd, seq
	TrailerLen     = 1    // crc
	Overhead       = HeaderLen + TrailerLen
	MaxData        = 256 // largest data field
	MaxFrameLen    = Overhead + MaxData
	MinFrameLen    = Overhead
	cmdCommandMask = 0x3F
	cmdFlagsMask   = 0xC0
)

// Flags are the two high bits of the cmd byte.
type Flags uint8

const (
	// FlagFragment marks one fragment of a message too large for one frame;
	// data starts with the two-byte fragment header (§6).
	FlagFragment Flags = 0x40
	// FlagSigned marks a signed frame; data ends with the 15-byte signature
	// block (§9).
	FlagSigned Flags = 0x80
)

func (f Flags) String() string {
	switch f {
	case 0:
		return "-"
	case FlagFragment:
		return "F"
	case FlagSigned:
		return "S"
	case FlagFragment | FlagSigned:
		return "FS"
	}
	return fmt.Sprintf("Flags(%#02x)", uint8(f))
}

// Sentinel errors of the frame codec; test with errors.Is.
var (
	ErrShortFrame   = errors.New("serialproto: frame shorter than its header says")
	ErrBadMagic     = errors.New("serialproto: first byte is not the magic 0x55")
	ErrTooLong      = errors.New("serialproto: length field exceeds 256")
	ErrBadCRC       = errors.New("serialproto: frame CRC-8 mismatch")
	ErrTrailing     = errors.New("serialproto: bytes after the frame in a datagram")
	ErrBadCommand   = errors.New("serialproto: command above 0x3f")
	ErrBadFlags     = errors.New("serialproto: flags outside the two high bits")
	ErrDataTooLarge = errors.New("serialproto: data exceeds 256 bytes")
)

// Frame is one decoded MCPFrame. Data of a frame returned by a Decoder
// aliases the decoder's buffer and is valid only until the next call.
type Frame struct {
	Version uint8
	Cmd     Command
	Flags   Flags
	Seq     uint8
	Data    []byte
}

// Len is the number of bytes the frame takes on the wire.
func (f Frame) Len() int { return Overhead + len(f.Data) }

func (f Frame) String() string {
	return fmt.Sprintf("v%d %s[%s] seq=%d len=%d", f.Version, f.Cmd, f.Flags, f.Seq, len(f.Data))
}

// AppendFrame appends the wire encoding of f to dst and returns the extended
// buffer. It allocates only when dst lacks capacity.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	if len(f.Data) > MaxData {
		return dst, fmt.Errorf("%w: %d", ErrDataTooLarge, len(f.Data))
	}
	// Any six-bit command encodes, known or not (a receiver answers unknown
	// ones with ERROR UNKNOWN_COMMAND, so tests must be able to send them).
	if f.Cmd&^cmdCommandMask != 0 {
		return dst, fmt.Errorf("%w: %#02x", ErrBadCommand, uint8(f.Cmd))
	}
	if f.Flags&^cmdFlagsMask != 0 {
		return dst, fmt.Errorf("%w: %#02x", ErrBadFlags, uint8(f.Flags))
	}
	start := len(dst)
	dst = append(dst, Magic, f.Version, byte(len(f.Data)>>8), byte(len(f.Data)), byte(f.Cmd)|byte(f.Flags), f.Seq)
	dst = append(dst, f.Data...)
	return append(dst, CRC8(dst[start+1:])), nil
}

// Decode decodes the single frame that p holds exactly, as a UDP datagram
// does. The returned Data aliases p. A frame of any version and any command
// decodes as long as its structure and CRC are sound: what an unknown
// version or command means is decided above the codec (§3, §4).
func Decode(p []byte) (Frame, error) {
	// Structure before CRC: a datagram with extra bytes is "trailing"
	// whatever its CRC says.
	if len(p) >= HeaderLen && p[0] == Magic {
		if n := Overhead + int(binary.BigEndian.Uint16(p[2:4])); n <= MaxFrameLen && len(p) > n {
			return Frame{}, fmt.Errorf("%w: %d", ErrTrailing, len(p)-n)
		}
	}
	f, _, err := decodePrefix(p)
	return f, err
}

// decodePrefix decodes the frame at the start of p and returns its length.
// Checks run in the order of docs/protocol.md §2.1: size, magic, length,
// size again, then the CRC.
func decodePrefix(p []byte) (Frame, int, error) {
	if len(p) < MinFrameLen {
		return Frame{}, 0, ErrShortFrame
	}
	if p[0] != Magic {
		return Frame{}, 0, ErrBadMagic
	}
	n := int(binary.BigEndian.Uint16(p[2:4]))
	if n > MaxData {
		return Frame{}, 0, fmt.Errorf("%w: %d", ErrTooLong, n)
	}
	total := Overhead + n
	if len(p) < total {
		return Frame{}, 0, ErrShortFrame
	}
	if CRC8(p[1:total-1]) != p[total-1] {
		return Frame{}, 0, ErrBadCRC
	}
	return Frame{
		Version: p[1],
		Cmd:     Command(p[4] & cmdCommandMask),
		Flags:   Flags(p[4] & cmdFlagsMask),
		Seq:     p[5],
		Data:    p[HeaderLen : total-1 : total-1],
	}, total, nil
}
