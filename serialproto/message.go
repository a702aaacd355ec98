package serialproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Errors of the message layer; test with errors.Is.
var (
	// ErrMalformed: a body does not match its command's layout (§11).
	ErrMalformed = errors.New("serialproto: malformed body")
	// ErrUnsupportedOption: an INFER carries an unknown critical option.
	ErrUnsupportedOption = errors.New("serialproto: unsupported critical option")
	// ErrUnknownCommand: no body layout exists for the command.
	ErrUnknownCommand = errors.New("serialproto: unknown command")
)

func malformed(cmd Command, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, cmd, fmt.Sprintf(format, args...))
}

// Message is the typed body of one command (docs/protocol.md §11).
type Message interface {
	// Command is the command whose body this is.
	Command() Command
	// AppendBody appends the encoded body to dst.
	AppendBody(dst []byte) ([]byte, error)
	// UnmarshalBody decodes b. Byte-slice fields alias b.
	UnmarshalBody(b []byte) error
}

// NewMessage returns an empty message for cmd, ready for UnmarshalBody.
func NewMessage(cmd Command) (Message, error) {
	switch cmd {
	case CmdHello:
		return new(Hello), nil
	case CmdWelcome:
		return new(Welcome), nil
	case CmdPing:
		return new(Ping), nil
	case CmdPong:
		return new(Pong), nil
	case CmdInfer:
		return new(Infer), nil
	case CmdToken:
		return new(Token), nil
	case CmdDone:
		return new(Done), nil
	case CmdError:
		return new(Error), nil
	case CmdCancel:
		return new(Cancel), nil
	case CmdAck:
		return new(Ack), nil
	case CmdNack:
		return new(Nack), nil
	case CmdStatus:
		return new(Status), nil
	case CmdStatusReply:
		return new(StatusReply), nil
	case CmdBye:
		return new(Bye), nil
	}
	return nil, fmt.Errorf("%w: %s", ErrUnknownCommand, cmd)
}

// ParseBody decodes the body of a cmd message.
func ParseBody(cmd Command, body []byte) (Message, error) {
	m, err := NewMessage(cmd)
	if err != nil {
		return nil, err
	}
	if err := m.UnmarshalBody(body); err != nil {
		return nil, err
	}
	return m, nil
}

// Feature bits of HELLO and WELCOME.
const (
	FeatureSign uint16 = 1 << 0
)

// Limits of the message layer.
const (
	MinDataLimit = 32 // smallest max_data a peer may announce
	// MinSignedDataLimit is the smallest max_data with signing: a signed
	// DONE takes 27 + 15 bytes.
	MinSignedDataLimit = 48
	MaxDeviceIDLen     = 64
	MaxErrorText       = 64
	MaxNackIndexes     = 64
	MaxPingData        = 8
	MaxModelLen        = 128
	MaxSystemLen       = 253 // the whole options block is at most 255 bytes
)

// Hello opens a session (device → daemon).
type Hello struct {
	MinVersion, MaxVersion uint8
	MaxData                uint16 // largest data field the device accepts
	Features               uint16
	Window                 uint8  // chunks the device can buffer
	BootNonce              uint32 // fresh per new HELLO
	DeviceID               string
}

func (*Hello) Command() Command { return CmdHello }

func (m *Hello) AppendBody(dst []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return dst, err
	}
	dst = append(dst, m.MinVersion, m.MaxVersion)
	dst = binary.BigEndian.AppendUint16(dst, m.MaxData)
	dst = binary.BigEndian.AppendUint16(dst, m.Features)
	dst = append(dst, m.Window)
	dst = binary.BigEndian.AppendUint32(dst, m.BootNonce)
	return append(dst, m.DeviceID...), nil
}

func (m *Hello) UnmarshalBody(b []byte) error {
	if len(b) < 12 {
		return malformed(CmdHello, "%d bytes, need at least 12", len(b))
	}
	*m = Hello{
		MinVersion: b[0], MaxVersion: b[1],
		MaxData:   binary.BigEndian.Uint16(b[2:]),
		Features:  binary.BigEndian.Uint16(b[4:]),
		Window:    b[6],
		BootNonce: binary.BigEndian.Uint32(b[7:]),
		DeviceID:  string(b[11:]),
	}
	return m.validate()
}

func (m *Hello) validate() error {
	switch {
	case m.MinVersion == 0 || m.MinVersion > m.MaxVersion:
		return malformed(CmdHello, "version range %d..%d", m.MinVersion, m.MaxVersion)
	case m.MaxData < MinDataLimit || m.MaxData > MaxData:
		return malformed(CmdHello, "max_data %d outside %d..%d", m.MaxData, MinDataLimit, MaxData)
	case m.Window == 0:
		return malformed(CmdHello, "window 0")
	case m.Features&FeatureSign != 0 && m.MaxData < MinSignedDataLimit:
		return malformed(CmdHello, "max_data %d too small for signed frames (at least %d)", m.MaxData, MinSignedDataLimit)
	case !ValidDeviceID(m.DeviceID):
		return malformed(CmdHello, "device id %q: 1..64 of [A-Za-z0-9._:-]", m.DeviceID)
	}
	return nil
}

// ValidDeviceID reports whether id is 1..64 bytes of [A-Za-z0-9._:-].
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > MaxDeviceIDLen {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// Welcome accepts a session (daemon → device).
type Welcome struct {
	Version     uint8
	MaxData     uint16
	Features    uint16
	Window      uint8
	HeartbeatMS uint16
	MaxMessage  uint16
	DaemonNonce uint32
}

func (*Welcome) Command() Command { return CmdWelcome }

func (m *Welcome) AppendBody(dst []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return dst, err
	}
	dst = append(dst, m.Version)
	dst = binary.BigEndian.AppendUint16(dst, m.MaxData)
	dst = binary.BigEndian.AppendUint16(dst, m.Features)
	dst = append(dst, m.Window)
	dst = binary.BigEndian.AppendUint16(dst, m.HeartbeatMS)
	dst = binary.BigEndian.AppendUint16(dst, m.MaxMessage)
	return binary.BigEndian.AppendUint32(dst, m.DaemonNonce), nil
}

func (m *Welcome) UnmarshalBody(b []byte) error {
	if len(b) != 14 {
		return malformed(CmdWelcome, "%d bytes, want 14", len(b))
	}
	*m = Welcome{
		Version:     b[0],
		MaxData:     binary.BigEndian.Uint16(b[1:]),
		Features:    binary.BigEndian.Uint16(b[3:]),
		Window:      b[5],
		HeartbeatMS: binary.BigEndian.Uint16(b[6:]),
		MaxMessage:  binary.BigEndian.Uint16(b[8:]),
		DaemonNonce: binary.BigEndian.Uint32(b[10:]),
	}
	return m.validate()
}

func (m *Welcome) validate() error {
	switch {
	case m.Version == 0:
		return malformed(CmdWelcome, "version 0")
	case m.MaxData < MinDataLimit || m.MaxData > MaxData:
		return malformed(CmdWelcome, "max_data %d outside %d..%d", m.MaxData, MinDataLimit, MaxData)
	case m.MaxMessage > MaxMessageLimit:
		return malformed(CmdWelcome, "max_message %d above %d", m.MaxMessage, MaxMessageLimit)
	}
	return nil
}

// Ping is a heartbeat; Data (0..8 bytes) comes back in the Pong.
type Ping struct{ Data []byte }

func (*Ping) Command() Command { return CmdPing }

func (m *Ping) AppendBody(dst []byte) ([]byte, error) {
	return appendOpaque(dst, CmdPing, m.Data)
}

func (m *Ping) UnmarshalBody(b []byte) error { return unmarshalOpaque(&m.Data, CmdPing, b) }

// Pong answers a Ping with its data.
type Pong struct{ Data []byte }

func (*Pong) Command() Command { return CmdPong }

func (m *Pong) AppendBody(dst []byte) ([]byte, error) {
	return appendOpaque(dst, CmdPong, m.Data)
}

func (m *Pong) UnmarshalBody(b []byte) error { return unmarshalOpaque(&m.Data, CmdPong, b) }

func appendOpaque(dst []byte, cmd Command, p []byte) ([]byte, error) {
	if len(p) > MaxPingData {
		return dst, malformed(cmd, "%d bytes, at most %d", len(p), MaxPingData)
	}
	return append(dst, p...), nil
}

func unmarshalOpaque(dst *[]byte, cmd Command, b []byte) error {
	if len(b) > MaxPingData {
		return malformed(cmd, "%d bytes, at most %d", len(b), MaxPingData)
	}
	*dst = b
	return nil
}

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
func (m *Error) Fit(limit int) { m.Text = cutUTF8(m.Text, min(limit-4, MaxErrorText)) }

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
// the chunk expected next), granting Window more.
type Ack struct {
	Next   uint16
	Window uint8
}

func (*Ack) Command() Command { return CmdAck }

func (m *Ack) AppendBody(dst []byte) ([]byte, error) {
	return append(binary.BigEndian.AppendUint16(dst, m.Next), m.Window), nil
}

func (m *Ack) UnmarshalBody(b []byte) error {
	if len(b) != 3 {
		return malformed(CmdAck, "%d bytes, want 3", len(b))
	}
	*m = Ack{Next: binary.BigEndian.Uint16(b), Window: b[2]}
	return nil
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

// Status asks the daemon for a StatusReply.
type Status struct{}

func (*Status) Command() Command                      { return CmdStatus }
func (*Status) AppendBody(dst []byte) ([]byte, error) { return appendEmpty(dst) }
func (*Status) UnmarshalBody(b []byte) error          { return unmarshalEmpty(CmdStatus, b) }

// Bye closes a session.
type Bye struct{}

func (*Bye) Command() Command                      { return CmdBye }
func (*Bye) AppendBody(dst []byte) ([]byte, error) { return appendEmpty(dst) }
func (*Bye) UnmarshalBody(b []byte) error          { return unmarshalEmpty(CmdBye, b) }

// Daemon states in STATUS_REPLY.
const (
	StateReady       uint8 = 0
	StateLoading     uint8 = 1
	StateDegraded    uint8 = 2
	StateUnavailable uint8 = 3
	StateDraining    uint8 = 4
)

// StatusReply reports the daemon's backend, model and load.
type StatusReply struct {
	State   uint8
	LoadPct uint8
	Queue   uint8
	Backend string
	Model   string
}

func (*StatusReply) Command() Command { return CmdStatusReply }

// Fit cuts the backend and model names, at character boundaries, so the
// body fits limit bytes. docs/protocol.md §11.11.
func (m *StatusReply) Fit(limit int) {
	m.Backend = cutUTF8(m.Backend, min(255, limit-4))
	m.Model = cutUTF8(m.Model, limit-4-len(m.Backend))
}

func (m *StatusReply) AppendBody(dst []byte) ([]byte, error) {
	if len(m.Backend) > 255 || 4+len(m.Backend)+len(m.Model) > MaxData || m.LoadPct > 100 ||
		!utf8.ValidString(m.Backend) || !utf8.ValidString(m.Model) {
		return dst, malformed(CmdStatusReply, "load ≤ 100 and UTF-8 names of ≤ %d bytes in all", MaxData-4)
	}
	dst = append(dst, m.State, m.LoadPct, m.Queue, byte(len(m.Backend)))
	return append(append(dst, m.Backend...), m.Model...), nil
}

func (m *StatusReply) UnmarshalBody(b []byte) error {
	if len(b) < 4 || len(b) < 4+int(b[3]) || len(b) > MaxData {
		return malformed(CmdStatusReply, "%d bytes, outside its fields' 4..%d", len(b), MaxData)
	}
	n := 4 + int(b[3])
	*m = StatusReply{State: b[0], LoadPct: b[1], Queue: b[2], Backend: string(b[4:n]), Model: string(b[n:])}
	if m.LoadPct > 100 {
		return malformed(CmdStatusReply, "load %d%% above 100", m.LoadPct)
	}
	if !utf8.ValidString(m.Backend) || !utf8.ValidString(m.Model) {
		return malformed(CmdStatusReply, "names are not UTF-8")
	}
	return nil
}
