package serialproto

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The messages of a request's stream: TOKEN, DONE, ERROR, ACK, NACK and
// CANCEL (§11).

// Token carries streamed text: complete UTF-8 characters.
type Token struct {
	Chunk uint16
	Text  []byte
}

func (*Token) Command() Command { return CmdToken }

func (m *Token) AppendBody(dst []byte) ([]byte, error) {
	if len(m.Text) == 0 || !utf8.Valid(m.Text) {
		return dst, malformed(CmdToken, "text must be complete UTF-8, at least one byte")
	}
	dst = binary.BigEndian.AppendUint16(dst, m.Chunk)
	return append(dst, m.Text...), nil
}

func (m *Token) UnmarshalBody(b []byte) error {
	if len(b) < 3 {
		return malformed(CmdToken, "%d bytes, need at least 3", len(b))
	}
	m.Chunk = binary.BigEndian.Uint16(b)
	m.Text = b[2:]
	if !utf8.Valid(m.Text) {
		return malformed(CmdToken, "text is not complete UTF-8")
	}
	return nil
}

// Stop reasons of DONE.
const (
	StopEOS     uint8 = 0 // the model ended its answer
	StopLength  uint8 = 1 // max tokens reached
	StopContext uint8 = 2 // the context is full
)

// Done ends a stream with its statistics.
type Done struct {
	Chunk        uint16
	Reason       uint8
	Tokens       uint32
	PromptTokens uint32
	TTFTMS       uint32
	DurationMS   uint32
	TextBytes    uint32
	TextCRC32C   uint32
}

func (*Done) Command() Command { return CmdDone }

func (m *Done) AppendBody(dst []byte) ([]byte, error) {
	dst = binary.BigEndian.AppendUint16(dst, m.Chunk)
	dst = append(dst, m.Reason)
	for _, v := range [...]uint32{m.Tokens, m.PromptTokens, m.TTFTMS, m.DurationMS, m.TextBytes, m.TextCRC32C} {
		dst = binary.BigEndian.AppendUint32(dst, v)
	}
	return dst, nil
}

func (m *Done) UnmarshalBody(b []byte) error {
	if len(b) != 27 {
		return malformed(CmdDone, "%d bytes, want 27", len(b))
	}
	u := func(i int) uint32 { return binary.BigEndian.Uint32(b[3+4*i:]) }
	*m = Done{
		Chunk: binary.BigEndian.Uint16(b), Reason: b[2],
		Tokens: u(0), PromptTokens: u(1), TTFTMS: u(2), DurationMS: u(3), TextBytes: u(4), TextCRC32C: u(5),
	}
	return nil
}

// Flags of an ERROR body.
const (
	ErrorFlagRetryable uint8 = 1 << 0
	ErrorFlagStream    uint8 = 1 << 1
)

// Error carries a numeric code and a short text.
type Error struct {
	Code  ErrorCode
	Flags uint8
	Chunk uint16
	Text  string
}

// NewError returns an ERROR body for code with its table's retryable flag.
func NewError(code ErrorCode, text string) *Error {
	e := &Error{Code: code, Text: text}
	if code.Retryable() {
		e.Flags |= ErrorFlagRetryable
	}
	return e
}

func (*Error) Command() Command { return CmdError }

// Fit cuts the text, at a character boundary, to the protocol's 64 bytes
// and so the body fits limit bytes (use BodyLimit of the receiver's
// max_data). docs/protocol.md §11.7.
func (m *Error) Fit(limit int) { m.Text = cutWords(m.Text, min(limit-4, MaxErrorText)) }

// maxWordCut is the longest word end cutWords drops to cut at a space.
const maxWordCut = 16

// cutWords returns s cut to at most n bytes at a word boundary, ending in
// "…" when anything was cut, so that a reader never sees half a word (or
// half a number: "context 20" for "context 2048"). A text with no space
// in its last 16 bytes (a long path) is cut within that word, still marked.
func cutWords(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	if n < len(ellipsis)+1 {
		return cutUTF8(s, n)
	}
	cut := cutUTF8(s, n-len(ellipsis))
	// Back to the last space unless that loses more than a short word: a
	// long path keeps what fits.
	if i := strings.LastIndexByte(cut, ' '); i > 0 && len(cut)-i <= maxWordCut {
		cut = cut[:i]
	}
	return strings.TrimRight(cut, " ,:;") + ellipsis
}

// cutUTF8 returns s cut to at most n bytes without splitting a character.
func cutUTF8(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Retryable reports the RETRYABLE flag.
func (m *Error) Retryable() bool { return m.Flags&ErrorFlagRetryable != 0 }

// Stream reports whether this ERROR is the final chunk of a stream.
func (m *Error) Stream() bool { return m.Flags&ErrorFlagStream != 0 }

// Error makes a received ERROR usable as a Go error.
func (m *Error) Error() string {
	return fmt.Sprintf("%s: %s", m.Code, m.Text)
}

func (m *Error) AppendBody(dst []byte) ([]byte, error) {
	if len(m.Text) > MaxErrorText || !utf8.ValidString(m.Text) {
		return dst, malformed(CmdError, "text must be ≤ %d bytes of UTF-8", MaxErrorText)
	}
	dst = append(dst, byte(m.Code), m.Flags)
	dst = binary.BigEndian.AppendUint16(dst, m.Chunk)
	return append(dst, m.Text...), nil
}

func (m *Error) UnmarshalBody(b []byte) error {
	if len(b) < 4 || len(b) > 4+MaxErrorText {
		return malformed(CmdError, "%d bytes, want 4..%d", len(b), 4+MaxErrorText)
	}
	*m = Error{Code: ErrorCode(b[0]), Flags: b[1], Chunk: binary.BigEndian.Uint16(b[2:]), Text: string(b[4:])}
	if !utf8.ValidString(m.Text) {
		return malformed(CmdError, "text is not UTF-8")
	}
	return nil
}

// Ack acknowledges a message (Next = fragments received) or a stream (Next =
// the chunk expected next), granting Window more. In a session with
// FeatureSACK a stream's ACK may also list the chunks after Next that the
// device holds (§8.2, §11.9): SACK[i/8] bit 7−i%8 set means chunk
// Next+1+i arrived. Its last byte is never 0.
type Ack struct {
	Next   uint16
	Window uint8
	SACK   []byte // 0..MaxSACKBytes bytes; aliases the body it was parsed from
}

func (*Ack) Command() Command { return CmdAck }

func (m *Ack) AppendBody(dst []byte) ([]byte, error) {
	if err := validSACK(m.SACK); err != nil {
		return dst, err
	}
	dst = append(binary.BigEndian.AppendUint16(dst, m.Next), m.Window)
	return append(dst, m.SACK...), nil
}

func (m *Ack) UnmarshalBody(b []byte) error {
	if len(b) < 3 {
		return malformed(CmdAck, "%d bytes, want 3..%d", len(b), 3+MaxSACKBytes)
	}
	a := Ack{Next: binary.BigEndian.Uint16(b), Window: b[2]}
	if len(b) > 3 {
		a.SACK = b[3:]
	}
	if err := validSACK(a.SACK); err != nil {
		return err
	}
	*m = a
	return nil
}

func validSACK(b []byte) error {
	switch {
	case len(b) > MaxSACKBytes:
		return malformed(CmdAck, "%d SACK bytes, want at most %d", len(b), MaxSACKBytes)
	case len(b) > 0 && b[len(b)-1] == 0:
		return malformed(CmdAck, "SACK bitmap ends in a zero byte")
	}
	return nil
}

// Sacked reports whether the ACK says chunk Next+1+i arrived.
func (m *Ack) Sacked(i int) bool {
	return i >= 0 && i/8 < len(m.SACK) && m.SACK[i/8]&(0x80>>(i%8)) != 0
}

// SetSACK returns bitmap with the bit of chunk Next+1+i set, grown as
// needed; i beyond the bitmap's 256 bits is ignored. Building it in a
// [MaxSACKBytes]byte array's slice (buf[:0]) allocates nothing.
func SetSACK(bitmap []byte, i int) []byte {
	if i < 0 || i >= 8*MaxSACKBytes {
		return bitmap
	}
	for len(bitmap) <= i/8 {
		bitmap = append(bitmap, 0)
	}
	bitmap[i/8] |= 0x80 >> (i % 8)
	return bitmap
}

// NACK reasons.
const (
	NackBadFrame    uint8 = 1
	NackMissing     uint8 = 2
	NackBadChecksum uint8 = 3
)

// Nack asks for retransmission.
type Nack struct {
	Reason  uint8
	Missing []byte // fragment indexes, ascending; only with NackMissing
}

func (*Nack) Command() Command { return CmdNack }

func (m *Nack) AppendBody(dst []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return dst, err
	}
	return append(append(dst, m.Reason), m.Missing...), nil
}

func (m *Nack) UnmarshalBody(b []byte) error {
	if len(b) < 1 {
		return malformed(CmdNack, "empty")
	}
	*m = Nack{Reason: b[0], Missing: b[1:]}
	return m.validate()
}

func (m *Nack) validate() error {
	switch m.Reason {
	case NackBadFrame, NackBadChecksum:
		if len(m.Missing) != 0 {
			return malformed(CmdNack, "reason %d carries no indexes", m.Reason)
		}
	case NackMissing:
		if len(m.Missing) == 0 || len(m.Missing) > MaxNackIndexes {
			return malformed(CmdNack, "%d missing indexes, want 1..%d", len(m.Missing), MaxNackIndexes)
		}
		for i := 1; i < len(m.Missing); i++ {
			if m.Missing[i] <= m.Missing[i-1] {
				return malformed(CmdNack, "missing indexes not ascending")
			}
		}
	default:
		return malformed(CmdNack, "unknown reason %d", m.Reason)
	}
	return nil
}

// emptyBody is shared by the commands whose body is empty.
func appendEmpty(dst []byte) ([]byte, error) { return dst, nil }

func unmarshalEmpty(cmd Command, b []byte) error {
	if len(b) != 0 {
		return malformed(cmd, "%d bytes, want none", len(b))
	}
	return nil
}

// Cancel stops the INFER whose seq the frame carries.
type Cancel struct{}

func (*Cancel) Command() Command                      { return CmdCancel }
func (*Cancel) AppendBody(dst []byte) ([]byte, error) { return appendEmpty(dst) }
func (*Cancel) UnmarshalBody(b []byte) error          { return unmarshalEmpty(CmdCancel, b) }
