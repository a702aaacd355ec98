package systemd

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket listens where NOTIFY_SOCKET points, as systemd would.
func notifySocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func recvNotify(t *testing.T, c *net.UnixConn, wait time.Duration) (string, bool) {
	t.Helper()
	buf := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		return "", false
	}
	return string(buf[:n]), true
}

func TestNotifierMessages(t *testing.T) {
	c := notifySocket(t)
	n := NewNotifier(os.Getenv)
	if !n.Enabled() {
		t.Fatal("NOTIFY_SOCKET is set but the notifier is off")
	}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	before := ts.Nano() / 1000
	for _, tc := range []struct {
		send func() error
		want string
	}{
		{func() error { return n.Ready("serving 2 links\nbackend llama.cpp") }, "READY=1\nSTATUS=serving 2 links backend llama.cpp"},
		{func() error { return n.Status("sessions 3") }, "STATUS=sessions 3"},
		{n.Watchdog, "WATCHDOG=1"},
		{func() error { return n.Reloading("reloading") }, "RELOADING=1\nMONOTONIC_USEC="},
		{func() error { return n.Stopping("draining") }, "STOPPING=1\nSTATUS=draining"},
	} {
		if err := tc.send(); err != nil {
			t.Fatal(err)
		}
		got, ok := recvNotify(t, c, 2*time.Second)
		if !ok || !strings.HasPrefix(got, tc.want) {
			t.Fatalf("got %q, want it to start with %q", got, tc.want)
		}
		if strings.Contains(got, "\n\n") {
			t.Fatalf("an empty line in %q", got)
		}
		if strings.HasPrefix(got, "RELOADING=1") {
			_, rest, _ := strings.Cut(got, "MONOTONIC_USEC=")
			usec, err := strconv.ParseInt(strings.SplitN(rest, "\n", 2)[0], 10, 64)
			if err != nil || usec < before || usec > before+10_000_000 {
				t.Fatalf("MONOTONIC_USEC in %q: not CLOCK_MONOTONIC now (%d)", got, before)
			}
		}
	}
}

func TestNotifierWithoutSystemdDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := NewNotifier(os.Getenv)
	for _, f := range []func() error{func() error { return n.Ready("x") }, n.Watchdog, func() error { return n.Stopping("x") }} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	var none *Notifier
	if none.Enabled() || none.Watchdog() != nil {
		t.Fatal("a nil notifier must do nothing")
	}
}

func TestNotifierReportsAMissingSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if err := NewNotifier(os.Getenv).Ready("x"); err == nil {
		t.Fatal("sending to a socket nobody listens on succeeded")
	}
}
