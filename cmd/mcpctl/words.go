package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	sp "github.com/mcpd-project/mcpd/serialproto"
)

// DefaultTarget is where mcpctl looks for mcpd without --udp or --serial:
// mcpd's own default UDP address.
const DefaultTarget = "127.0.0.1:7700"

// humanCodes says what each protocol error means to the person at the
// terminal and what to do; the daemon's text (with its figures) follows.
var humanCodes = map[sp.ErrorCode]string{
	sp.CodeUnknownCommand:     "mcpd does not know a command mcpctl sent (versions differ?)",
	sp.CodeUnsupportedVersion: "mcpd speaks another protocol version",
	sp.CodeMalformed:          "mcpd could not parse the request",
	sp.CodeNoSession:          "the session had expired; run the command again",
	sp.CodeTooLarge:           "the request is too large for mcpd's limits",
	sp.CodeBusy:               "mcpd is busy (engine slots and queue full, or this device is at its request cap); retry in a moment",
	sp.CodeTimeout:            "the request ran past its deadline (mcpd's request_timeout)",
	sp.CodeCancelled:          "the request was cancelled",
	sp.CodeModelNotFound:      "mcpd has no such model, or no usable model yet (see 'systemctl status mcpd' or mcpd's log)",
	sp.CodeBackendUnavailable: "mcpd's inference engine is not available right now; retry shortly",
	sp.CodeBackendFailed:      "mcpd's inference engine failed on this request",
	sp.CodeAuthRequired:       "this device id must sign its frames: give --key",
	sp.CodeAuthFailed:         "the signature was rejected: --key is not this device id's key",
	sp.CodeShuttingDown:       "mcpd is shutting down",
	sp.CodeRateLimited:        "rate limited: this device's token budget is spent, or it sends too fast",
	sp.CodeIncomplete:         "part of the request never arrived",
	sp.CodeUnsupportedOption:  "mcpd does not support an option given",
	sp.CodeUnexpected:         "mcpd did not expect that frame now",
	sp.CodeUnknownRequest:     "mcpd knows no such request",
	sp.CodeInternal:           "mcpd hit an internal error (see its log)",
	sp.CodeForbidden:          "mcpd's policy does not allow this (device id, network, serial port or model)",
	sp.CodeToolTimeout:        "a tool of this device did not answer in time (mcpd's tool_timeout)",
	sp.CodeToolLimit:          "the model called tools too often, or a tool's result was too large (mcpd's max_tool_calls, 1024 bytes)",
}

// protocolExit makes a daemon ERROR the process's exit status: the
// protocol's error code (docs/protocol.md §12).
type protocolExit struct{ e *sp.Error }

func (p protocolExit) Error() string {
	human, ok := humanCodes[p.e.Code]
	if !ok {
		human = "mcpd answered an error"
	}
	detail := ""
	if p.e.Text != "" {
		detail = ": " + p.e.Text
	}
	return fmt.Sprintf("%s [%s%s]", human, p.e.Code, detail)
}

func (p protocolExit) ExitCode() int { return int(p.e.Code) }

// interrupted is Ctrl-C: the shell's convention, 128 + SIGINT.
type interrupted struct{}

func (interrupted) Error() string { return "interrupted" }
func (interrupted) ExitCode() int { return 130 }

// asExit turns a command's failure into what the user reads and the exit
// status: the daemon's ERROR by its code, an interrupt by 130.
func asExit(ctx context.Context, err error) error {
	var e *sp.Error
	switch {
	case errors.As(err, &e):
		return protocolExit{e}
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return interrupted{}
	}
	return err
}

// unreachable is a HELLO nobody answered.
type unreachable struct {
	where, addr string
	wait        time.Duration
	serial      bool
}

func (u unreachable) Error() string {
	if u.serial {
		return fmt.Sprintf("no answer on %s within %v: is mcpd running with --serial on the other end of this line, at the same baud?", u.addr, u.wait)
	}
	return fmt.Sprintf("no answer from %s within %v: is mcpd running at %s? (start it with 'mcpd', or point mcpctl elsewhere with --udp HOST:PORT)", u.addr, u.wait, u.addr)
}

// plural is "1 device", "3 devices".
func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// describe gives fs a usage text: the synopsis, what the command does, then
// its flags.
func describeCommand(fs *flag.FlagSet, stderr io.Writer, synopsis, text string) {
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mcpctl %s %s\n\n%s\n\nFlags:\n", fs.Name(), synopsis, text)
		fs.PrintDefaults()
	}
}

// flagError is a bad command line the flag package has already printed,
// with the usage: main must not print it a second time.
type flagError struct{ err error }

func (f flagError) Error() string { return f.err.Error() }
func (f flagError) Unwrap() error { return f.err }
func (flagError) ExitCode() int   { return 2 }

// parseFlags parses args; a bad flag comes back as a flagError, -h as
// flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return flagError{err}
}
