// Package chatstate frames the file in which the daemon keeps devices'
// chat histories across restarts (docs/caching.md, docs/protocol.md §10):
// each conversation with the identity that may resume it, saved with the
// engine's warm KV cache so that a device's next turn after a restart
// continues its conversation and finds it evaluated.
//
// The file holds device and chat text, is read at start from the state
// directory, and must never crash the daemon: everything is bounded by the
// file's size before it is allocated, every byte is covered by a CRC-32C,
// and an encoding is accepted only in its one canonical form.
//
// Layout, little-endian:
//
//	header (64 bytes)
//	  0  magic "MCPDCHT\x00"
//	  8  version u16 (2; version 1 is read too)
//	 10  flags u16 (0; any other value is refused)
//	 12  records u32
//	 16  identity [32]byte: SHA-256 of what the daemon serves with (Identity)
//	 48  reserved, 12 bytes of 0
//	 60  CRC-32C (Castagnoli) of bytes 0..59
//	records, most recently used first, each:
//	  length u32 of the body, body, CRC-32C of length and body (u32)
//	  body:
//	    owner     u8 length, bytes (1..255): who may resume it
//	    device id u8 length, bytes (1..64)
//	    key check [16]byte: the signing key's fingerprint, zero for none
//	    last used i64, unix nanoseconds
//	    messages  u16 count (1..65535), each:
//	      role u8 (1 system, 2 user, 3 assistant, 4 tool)
//	      content u32 length, bytes
//	      tool call u8 (0 none, 1 one follows):
//	        tool i32, name u16 length, bytes, args u32 length, bytes
//	      tokens u32 count, each i32 ≥ 0 (version 2 only): the ids the
//	        engine generated for an answer (backends.Message.Tokens)
//	nothing after the last record.
package chatstate

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/internal/stateheader"
)

// Magic starts every chat file.
const Magic = "MCPDCHT\x00"

// Version is the layout this package writes; it reads OldestVersion too.
const Version = 2

// OldestVersion is the oldest layout Read accepts: version 1 lacks the
// answers' tokens, which only make the next turn slower to evaluate.
const OldestVersion = 1

// identityVersion is the version Identity names: the same in versions 1
// and 2, so that a daemon upgraded from 1 keeps its conversations.
const identityVersion = 1

const headerSize = stateheader.Size

// MaxRecords bounds what a header may claim (the daemon keeps at most a
// session table's worth of conversations and then some).
const MaxRecords = 1 << 16

// Errors Read returns, wrapped with details.
var (
	ErrMagic     = errors.New("not a chat file")
	ErrVersion   = errors.New("unsupported chat file version")
	ErrIdentity  = errors.New("chat file written for another model")
	ErrCorrupt   = errors.New("chat file corrupt")
	ErrTruncated = errors.New("chat file truncated")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var headerErrors = stateheader.Errors{Magic: ErrMagic, Version: ErrVersion, Corrupt: ErrCorrupt, Truncated: ErrTruncated}

// Conversation is one device's chat history and who may have it back.
type Conversation struct {
	// Owner is the identity that may resume it (the daemon's: a signing
	// key's device id, a serial port, ...).
	Owner    string
	DeviceID string
	// KeyCheck fingerprints the device's signing key when the
	// conversation was saved; zero for an unsigned device.
	KeyCheck [16]byte
	LastUsed time.Time
	Messages []backends.Message
}

// Size is the bytes c takes in a file of this Version.
func (c Conversation) Size() int64 { return c.size(Version) }

func (c Conversation) size(version uint16) int64 {
	n := int64(4 + 1 + len(c.Owner) + 1 + len(c.DeviceID) + 16 + 8 + 2 + 4)
	for _, m := range c.Messages {
		n += 1 + 4 + int64(len(m.Content)) + 1
		if version >= 2 {
			n += 4 + 4*int64(len(m.Tokens))
		}
		if m.ToolCall != nil {
			n += 4 + 2 + int64(len(m.ToolCall.Name)) + 4 + int64(len(m.ToolCall.Args))
		}
	}
	return n
}

// Identity is the header identity of what the daemon serves with (the
// backend and its model): a file written for another one is refused.
func Identity(model string) [32]byte {
	return sha256.Sum256([]byte(fmt.Sprintf("mcpd chats v%d\x00%s", identityVersion, model)))
}

var roles = []backends.Role{backends.RoleSystem, backends.RoleUser, backends.RoleAssistant, backends.RoleTool}

func roleCode(r backends.Role) (byte, bool) {
	for i, x := range roles {
		if x == r {
			return byte(i + 1), true
		}
	}
	return 0, false
}

func (c Conversation) check() error {
	switch {
	case len(c.Owner) == 0 || len(c.Owner) > 255:
		return fmt.Errorf("%w: owner of %d bytes", ErrCorrupt, len(c.Owner))
	case len(c.DeviceID) == 0 || len(c.DeviceID) > 64:
		return fmt.Errorf("%w: device id of %d bytes", ErrCorrupt, len(c.DeviceID))
	case len(c.Messages) == 0 || len(c.Messages) > 0xffff:
		return fmt.Errorf("%w: %d messages", ErrCorrupt, len(c.Messages))
	}
	for _, m := range c.Messages {
		if _, ok := roleCode(m.Role); !ok {
			return fmt.Errorf("%w: role %q", ErrCorrupt, m.Role)
		}
		if tc := m.ToolCall; tc != nil && (len(tc.Name) > 0xffff || int64(len(tc.Args)) > 0xffffffff) {
			return fmt.Errorf("%w: tool call of %d and %d bytes", ErrCorrupt, len(tc.Name), len(tc.Args))
		}
		if int64(len(m.Content)) > 0xffffffff {
			return fmt.Errorf("%w: message of %d bytes", ErrCorrupt, len(m.Content))
		}
		for _, t := range m.Tokens {
			if t < 0 {
				return fmt.Errorf("%w: token id %d", ErrCorrupt, t)
			}
		}
	}
	return nil
}

// Write writes a chat file holding convs for identity id.
func Write(w io.Writer, id [32]byte, convs []Conversation) error {
	return write(w, id, convs, Version)
}

// write is Write in the layout of version (tests write version 1 too;
// messages' tokens are left out of it).
func write(w io.Writer, id [32]byte, convs []Conversation, version uint16) error {
	if len(convs) > MaxRecords {
		return fmt.Errorf("chat file: %d conversations, at most %d", len(convs), MaxRecords)
	}
	h := stateheader.Encode(Magic, version, stateheader.Header{Records: uint32(len(convs)), Identity: id})
	if _, err := w.Write(h); err != nil {
		return fmt.Errorf("chat file header: %w", err)
	}
	for _, c := range convs {
		if err := c.check(); err != nil {
			return fmt.Errorf("chat file: %w", err)
		}
		if _, err := w.Write(encode(c, version)); err != nil {
			return fmt.Errorf("chat file record: %w", err)
		}
	}
	return nil
}

// encode is c's record in the layout of version: length, body, CRC.
func encode(c Conversation, version uint16) []byte {
	b := make([]byte, 4, c.size(version))
	b = append(b, byte(len(c.Owner)))
	b = append(b, c.Owner...)
	b = append(b, byte(len(c.DeviceID)))
	b = append(b, c.DeviceID...)
	b = append(b, c.KeyCheck[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(c.LastUsed.UnixNano()))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(c.Messages)))
	for _, m := range c.Messages {
		r, _ := roleCode(m.Role)
		b = append(b, r)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Content)))
		b = append(b, m.Content...)
		if tc := m.ToolCall; tc == nil {
			b = append(b, 0)
		} else {
			b = append(b, 1)
			b = binary.LittleEndian.AppendUint32(b, uint32(int32(tc.Tool)))
			b = binary.LittleEndian.AppendUint16(b, uint16(len(tc.Name)))
			b = append(b, tc.Name...)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(tc.Args)))
			b = append(b, tc.Args...)
		}
		if version >= 2 {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Tokens)))
			for _, t := range m.Tokens {
				b = binary.LittleEndian.AppendUint32(b, uint32(t))
			}
		}
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// Read reads a whole chat file of size bytes from r: it must be of a
// version from OldestVersion to Version, written for identity id. Nothing
// is returned unless every record checked.
func Read(r io.Reader, size int64, id [32]byte) ([]Conversation, error) {
	h, version, err := stateheader.ReadVersions(r, size, Magic, OldestVersion, Version, headerErrors)
	switch {
	case err != nil:
		return nil, err
	case h.Own != [12]byte{}:
		return nil, fmt.Errorf("%w: reserved bytes set", ErrVersion)
	case h.Identity != id:
		return nil, ErrIdentity
	}
	n := h.Records
	left := size - headerSize
	// Each record takes at least 8 framing bytes: a corrupt count cannot
	// make us allocate more than the file's size.
	if n > MaxRecords || int64(n)*8 > left {
		return nil, fmt.Errorf("%w: %d records in %d bytes", ErrCorrupt, n, left)
	}
	convs := make([]Conversation, 0, n)
	for i := range n {
		var head [4]byte
		if left < 8 {
			return nil, fmt.Errorf("%w: record %d", ErrTruncated, i)
		}
		if _, err := io.ReadFull(r, head[:]); err != nil {
			return nil, fmt.Errorf("%w: record %d: %w", ErrTruncated, i, err)
		}
		length := int64(binary.LittleEndian.Uint32(head[:]))
		if length+8 > left {
			return nil, fmt.Errorf("%w: record %d claims %d bytes, %d left", ErrTruncated, i, length, left-8)
		}
		rec := make([]byte, 4+length+4)
		copy(rec, head[:])
		if _, err := io.ReadFull(r, rec[4:]); err != nil {
			return nil, fmt.Errorf("%w: record %d: %w", ErrTruncated, i, err)
		}
		left -= int64(len(rec))
		body, sum := rec[:len(rec)-4], binary.LittleEndian.Uint32(rec[len(rec)-4:])
		if crc32.Checksum(body, castagnoli) != sum {
			return nil, fmt.Errorf("%w: record %d CRC", ErrCorrupt, i)
		}
		c, err := decode(body[4:], version)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		convs = append(convs, c)
	}
	if left != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last record", ErrCorrupt, left)
	}
	return convs, nil
}

// decode parses a record's body of a file of version; it must be the
// canonical encoding of a sound conversation.
func decode(b []byte, version uint16) (Conversation, error) {
	d := decoder{b: b}
	var c Conversation
	c.Owner = string(d.take(int(d.u8())))
	c.DeviceID = string(d.take(int(d.u8())))
	copy(c.KeyCheck[:], d.take(16))
	c.LastUsed = time.Unix(0, int64(d.u64()))
	n := int(d.u16())
	for range n {
		if d.err != nil {
			break
		}
		code := d.u8()
		if code == 0 || int(code) > len(roles) {
			return c, fmt.Errorf("%w: role %d", ErrCorrupt, code)
		}
		m := backends.Message{Role: roles[code-1], Content: string(d.take(int(d.u32())))}
		switch d.u8() {
		case 0:
		case 1:
			tc := &backends.ToolCall{Tool: int(int32(d.u32()))}
			tc.Name = string(d.take(int(d.u16())))
			if args := d.take(int(d.u32())); args != nil {
				tc.Args = append([]byte(nil), args...)
			}
			m.ToolCall = tc
		default:
			return c, fmt.Errorf("%w: tool call flag", ErrCorrupt)
		}
		if version >= 2 {
			// The count is checked against the record's bytes before
			// anything is allocated for it.
			if raw := d.take4(d.u32()); len(raw) > 0 {
				m.Tokens = make([]int32, len(raw)/4)
				for i := range m.Tokens {
					m.Tokens[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
				}
			}
		}
		c.Messages = append(c.Messages, m)
	}
	if d.err != nil {
		return c, d.err
	}
	if len(d.b) != 0 {
		return c, fmt.Errorf("%w: %d bytes after the messages", ErrCorrupt, len(d.b))
	}
	return c, c.check()
}

// decoder reads a record's fields; the first overrun sets err and makes
// every later read return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = fmt.Errorf("%w: a field of %d bytes, %d left in the record", ErrCorrupt, n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// take4 takes n fields of 4 bytes.
func (d *decoder) take4(n uint32) []byte {
	if d.err == nil && uint64(n) > uint64(len(d.b)/4) {
		d.err = fmt.Errorf("%w: %d fields of 4 bytes, %d bytes left in the record", ErrCorrupt, n, len(d.b))
	}
	return d.take(4 * int(n))
}

func (d *decoder) u8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if b := d.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}
