package serialproto

import "fmt"

// Command is the low six bits of the cmd byte (docs/protocol.md §4).
type Command uint8

// The command table of protocol version 1.
const (
	CmdHello       Command = 0x01 // device → daemon: open a session
	CmdWelcome     Command = 0x02 // daemon → device: session opened
	CmdPing        Command = 0x03 // either way: heartbeat
	CmdPong        Command = 0x04 // answer to PING
	CmdInfer       Command = 0x05 // device → daemon: a prompt
	CmdToken       Command = 0x06 // daemon → device: streamed output
	CmdDone        Command = 0x07 // daemon → device: end of a stream, statistics
	CmdError       Command = 0x08 // either way: code + text
	CmdCancel      Command = 0x09 // device → daemon: stop a request
	CmdAck         Command = 0x0A // either way: acknowledgement + credit
	CmdNack        Command = 0x0B // either way: negative acknowledgement
	CmdStatus      Command = 0x0C // device → daemon: ask for status
	CmdStatusReply Command = 0x0D // daemon → device: backend, model, load
	CmdBye         Command = 0x0E // either way: close the session
	// Device tools (§16).
	CmdTools      Command = 0x0F // device → daemon: declare the device's tools
	CmdToolCall   Command = 0x10 // daemon → device: the model calls a tool (a stream chunk)
	CmdToolResult Command = 0x11 // device → daemon: a tool call's result
)

var commandNames = [...]string{
	CmdHello:       "HELLO",
	CmdWelcome:     "WELCOME",
	CmdPing:        "PING",
	CmdPong:        "PONG",
	CmdInfer:       "INFER",
	CmdToken:       "TOKEN",
	CmdDone:        "DONE",
	CmdError:       "ERROR",
	CmdCancel:      "CANCEL",
	CmdAck:         "ACK",
	CmdNack:        "NACK",
	CmdStatus:      "STATUS",
	CmdStatusReply: "STATUS_REPLY",
	CmdBye:         "BYE",
	CmdTools:       "TOOLS",
	CmdToolCall:    "TOOL_CALL",
	CmdToolResult:  "TOOL_RESULT",
}

// Known reports whether c is in the version-1 command table.
func (c Command) Known() bool {
	return int(c) < len(commandNames) && commandNames[c] != ""
}

// Request reports whether c starts a request of its sender, taking a new
// seq from the sender's counter (§5): HELLO, PING, INFER, STATUS, BYE.
// Every other command carries the seq of the request it belongs to.
func (c Command) Request() bool {
	switch c {
	case CmdHello, CmdPing, CmdInfer, CmdStatus, CmdBye, CmdTools:
		return true
	}
	return false
}

// Travels reports whether c is sent in direction dir (§4's "dir" column).
// A known command received the other way is answered with ERROR
// UNEXPECTED before its body is looked at (§4).
func (c Command) Travels(dir Direction) bool {
	switch c {
	case CmdHello, CmdInfer, CmdCancel, CmdStatus, CmdTools, CmdToolResult:
		return dir == DeviceToDaemon
	case CmdWelcome, CmdToken, CmdDone, CmdStatusReply, CmdToolCall:
		return dir == DaemonToDevice
	}
	return c.Known()
}

// Fragmented reports whether c is always sent as a message of fragments
// (§6): INFER, TOOLS and TOOL_RESULT. Every other command is one frame
// without the FRAGMENT flag.
func (c Command) Fragmented() bool {
	return c == CmdInfer || c == CmdTools || c == CmdToolResult
}

func (c Command) String() string {
	if c.Known() {
		return commandNames[c]
	}
	return fmt.Sprintf("CMD(%#02x)", uint8(c))
}

// ParseCommand returns the command named s ("INFER"), for tools and tests.
func ParseCommand(s string) (Command, bool) {
	for c, name := range commandNames {
		if name != "" && name == s {
			return Command(c), true
		}
	}
	return 0, false
}
