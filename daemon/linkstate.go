package daemon

import (
	"errors"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.bug.st/serial"
)

// LinkState is the health of one link — for a serial glob, of each port it
// matched — as /status, /readyz and the systemd status line show it.
type LinkState struct {
	Name  string    `json:"name"`
	Up    bool      `json:"up"`
	Error string    `json:"error,omitempty"` // why it is down
	Hint  string    `json:"hint,omitempty"`  // what usually fixes that
	Since time.Time `json:"since"`           // when it went up or down
}

// LinkReporter is a Link that knows whether it is up. A link that is not
// one counts as up while it is served (a bound UDP socket).
type LinkReporter interface {
	LinkStates() []LinkState
}

// LinkStates returns the health of the served links, sorted by name.
func (d *Daemon) LinkStates() []LinkState {
	d.links.mu.Lock()
	running := make([]*runningLink, 0, len(d.links.running))
	for _, rl := range d.links.running {
		running = append(running, rl)
	}
	d.links.mu.Unlock()
	var out []LinkState
	for _, rl := range running {
		if r, ok := rl.link.(LinkReporter); ok {
			out = append(out, r.LinkStates()...)
			continue
		}
		out = append(out, LinkState{Name: rl.link.Name(), Up: true, Since: rl.since})
	}
	slices.SortFunc(out, func(a, b LinkState) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// portHealth is a serial path's state, and what was last said about it so
// that a port that keeps failing the same way is logged once.
type portHealth struct {
	mu     sync.Mutex
	state  LinkState
	warned string // the cause last logged at WARN; "" after a success
}

// failed records a failed open and reports whether it is news worth a
// WARN: the first failure, or a different cause than the one logged.
func (h *portHealth) failed(now time.Time, err error) (news bool, hint string) {
	cause := openCause(err)
	hint = serialHint(err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state.Up || h.state.Since.IsZero() || h.state.Error != cause {
		h.state.Since = now
	}
	h.state.Up, h.state.Error, h.state.Hint = false, cause, hint
	news = h.warned != cause
	h.warned = cause
	return news, hint
}

// opened records a successful open.
func (h *portHealth) opened(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state = LinkState{Name: h.state.Name, Up: true, Since: now}
	h.warned = ""
}

// lost records a port that was open and failed.
func (h *portHealth) lost(now time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state = LinkState{Name: h.state.Name, Error: "lost: " + err.Error(), Since: now}
}

func (h *portHealth) get() LinkState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state
}

// openCause is the short reason an open failed, without the path (the
// state's name has it), stable while the cause is the same.
func openCause(err error) string {
	var pe *serial.PortError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such device"
	case errors.Is(err, fs.ErrPermission), errors.As(err, &pe) && pe.Code() == serial.PermissionDenied:
		return "permission denied"
	case errors.Is(err, syscall.EBUSY), errors.As(err, &pe) && pe.Code() == serial.PortBusy:
		return "port busy"
	case errors.Is(err, syscall.ENOTTY), errors.As(err, &pe) && pe.Code() == serial.InvalidSerialPort:
		return "not a serial port (it has no terminal settings)"
	case errors.Is(err, syscall.EISDIR):
		return "is a directory, not a serial port"
	}
	return err.Error()
}

// serialHint says what usually fixes a port that does not open, in the
// terms of the shipped unit and udev rule (docs/systemd.md).
func serialHint(err error) string {
	switch openCause(err) {
	case "no such device":
		return "check the cable and the path (ls -l /dev/ttyUSB* /dev/ttyACM* /dev/ttyAMA* /dev/ttyS* /dev/serial*); " +
			"a Raspberry Pi's GPIO UART needs enable_uart=1 and no serial console on it; mcpd keeps retrying"
	case "permission denied":
		return "the service user may not open it: add it to the dialout group (usermod -aG dialout USER), " +
			"or install systemd/60-mcpd-serial.rules; under systemd the unit needs SupplementaryGroups=dialout " +
			"and a DeviceAllow= line for this device class (char-ttyUSB, char-ttyACM, char-ttyAMA, char-ttyS)"
	case "port busy":
		return "another program holds the port (ModemManager, a serial console, screen, minicom): stop it"
	}
	return ""
}
