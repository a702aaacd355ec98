// Package ptytest opens pseudo-terminals that stand in for UARTs in tests.
package ptytest

import (
	"context"
	"os"
	"testing"

	"github.com/creack/pty"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/impair"
	"golang.org/x/sys/unix"
)

// Open returns a pseudo-terminal pair, the terminal side raw as a UART is
// (no echo, no line editing), closed when the test ends. Code under test
// opens the terminal by its path (go.bug.st/serial); the test's own end is
// the master. The terminal stays open for the test's life: with no
// terminal fd open, reading the master fails with EIO (a pty "hangup").
// Where there are no pseudo-terminals the test is skipped.
func Open(tb testing.TB) (master *os.File, tty string) {
	tb.Helper()
	pm, s, err := pty.Open()
	if err != nil {
		tb.Skipf("no pseudo-terminals: %v", err)
	}
	// pty.Open leaves the master blocking, out of Go's poller: a read on it
	// could be neither timed out nor interrupted. A non-blocking duplicate
	// joins the poller, so deadlines and Close end a blocked read.
	fd, err := unix.Dup(int(pm.Fd()))
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	pm.Close()
	if err != nil {
		s.Close()
		tb.Fatal(err)
	}
	m := os.NewFile(uintptr(fd), "ptmx")
	tb.Cleanup(func() { m.Close(); s.Close() })
	if err := device.MakeRaw(s); err != nil {
		tb.Fatal(err)
	}
	return m, s.Name()
}

// Cable joins two pairs master to master, unpaced and clean, as socat
// does: a serial cable with a named terminal at each end. It returns the
// two terminals' paths and runs until the test ends.
func Cable(tb testing.TB) (a, b string) {
	tb.Helper()
	ma, a := Open(tb)
	mb, b := Open(tb)
	ctx, cancel := context.WithCancel(context.Background())
	line, err := impair.StartLine(ctx, ma, mb, impair.LineConfig{})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); line.Wait() })
	return a, b
}
