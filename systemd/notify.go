package systemd

import (
	"fmt"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify(3) messages to the service manager through
// $NOTIFY_SOCKET. Without that variable (not started by systemd, or a
// Type= that does not listen) every method does nothing and returns nil.
// A nil *Notifier does nothing too.
type Notifier struct {
	socket string
}

// NewNotifier reads NOTIFY_SOCKET through getenv (os.Getenv in mcpd).
func NewNotifier(getenv func(string) string) *Notifier {
	return &Notifier{socket: getenv("NOTIFY_SOCKET")}
}

// Enabled reports whether messages go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.socket != "" }

// send delivers one datagram of NAME=value lines.
func (n *Notifier) send(state string) error {
	if !n.Enabled() {
		return nil
	}
	// SdNotify reads NOTIFY_SOCKET itself; keep it unset-safe by checking
	// what it reports: (false, nil) means the variable vanished.
	sent, err := daemon.SdNotify(false, state)
	if err != nil {
		return fmt.Errorf("systemd: notify %q: %w", firstLine(state), err)
	}
	if !sent {
		return fmt.Errorf("systemd: notify %q: NOTIFY_SOCKET is no longer set", firstLine(state))
	}
	return nil
}

func firstLine(s string) string { line, _, _ := strings.Cut(s, "\n"); return line }

// oneLine keeps a STATUS= text on one line: a newline would start another
// assignment in the datagram.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Ready says start-up (or a reload) is complete, with a status line.
func (n *Notifier) Ready(status string) error {
	return n.send(daemon.SdNotifyReady + "\nSTATUS=" + oneLine(status))
}

// Reloading says a reload has begun. MONOTONIC_USEC (CLOCK_MONOTONIC now)
// is what Type=notify-reload (systemd ≥ 253) needs to match it with the
// reload it asked for.
func (n *Notifier) Reloading(status string) error {
	// SdNotifyMonotonicUsec ends its line itself.
	state := daemon.SdNotifyReloading + "\n"
	if usec := strings.TrimSpace(daemon.SdNotifyMonotonicUsec()); usec != "" { // "" without a monotonic clock
		state += usec + "\n"
	}
	return n.send(state + "STATUS=" + oneLine(status))
}

// Stopping says shutdown has begun.
func (n *Notifier) Stopping(status string) error {
	return n.send(daemon.SdNotifyStopping + "\nSTATUS=" + oneLine(status))
}

// Status sets the free-form line `systemctl status` shows.
func (n *Notifier) Status(status string) error { return n.send("STATUS=" + oneLine(status)) }

// Watchdog pings the service watchdog.
func (n *Notifier) Watchdog() error { return n.send(daemon.SdNotifyWatchdog) }
