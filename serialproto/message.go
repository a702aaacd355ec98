package serialproto

import (
	"errors"
	"fmt"
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
	case CmdTools:
		return new(Tools), nil
	case CmdToolCall:
		return new(ToolCall), nil
	case CmdToolResult:
		return new(ToolResult), nil
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
	// FeatureSACK: the device keeps answer chunks that arrive after a gap
	// and lists them in its ACKs; the daemon resends only the gaps (§8.2).
	FeatureSACK uint16 = 1 << 1
	// FeatureStatusExt: the device reads the extended STATUS_REPLY, whose
	// fields carry the daemon's cache figures (§11.11).
	FeatureStatusExt uint16 = 1 << 2
	// FeatureResume: in HELLO, the device asks to continue the
	// conversation the daemon kept for it (a session that ended, a daemon
	// restart); in WELCOME, the new session holds that conversation (§10).
	FeatureResume uint16 = 1 << 3
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
	MaxSACKBytes       = 32 // an ACK's bitmap covers a window of 255 after next
	MaxPingData        = 8
	MaxModelLen        = 128
	MaxSystemLen       = 253 // the whole options block is at most 255 bytes
)
