package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.bug.st/serial"
)

// logRecords keeps every record logged, for tests of what an operator sees.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// matching returns the records at level whose message contains msg, each
// as "message key=value …".
func (l *logRecords) matching(level slog.Level, msg string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		if r.Level != level || !strings.Contains(r.Message, msg) {
			continue
		}
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%s", a.Key, a.Value)
			return true
		})
		out = append(out, b.String())
	}
	return out
}

func (l *logRecords) count(level slog.Level, msg string) int { return len(l.matching(level, msg)) }

func runSerialLink(t *testing.T, spec string, log *slog.Logger) *Daemon {
	t.Helper()
	d, err := New(Config{}, &testEngine{}, log)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ParseSerial(spec)
	if err != nil {
		t.Fatal(err)
	}
	runLinks(t, d, NewSerialLink(sc, log))
	return d
}

// A port that does not exist is said once at WARN, with the cause and a
// hint, then retried quietly; /status shows it down with the cause; once
// the port appears it opens and shows up.
func TestSerialLinkMissingThenPlugged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ttyNOPE")
	logs := &logRecords{}
	d := runSerialLink(t, path, slog.New(logs))

	waitFor(t, func() bool { return logs.count(slog.LevelDebug, "serial port not available") >= 4 }) // retried
	warns := logs.matching(slog.LevelWarn, "cannot be opened")
	if len(warns) != 1 {
		t.Fatalf("%d WARN lines for a missing port, want 1: %q", len(warns), warns)
	}
	for _, want := range []string{"port=" + path, "err=no such device", "hint=check the cable", "/dev/ttyAMA*"} {
		if !strings.Contains(warns[0], want) {
			t.Errorf("WARN %q lacks %q", warns[0], want)
		}
	}
	if n := logs.count(slog.LevelInfo, "link up"); n != 0 {
		t.Errorf("a port that never opened was logged as up")
	}
	snap := d.Snapshot(context.Background())
	if snap.LinksUp != 0 || len(snap.LinkStates) != 1 {
		t.Fatalf("link states %+v, up %d", snap.LinkStates, snap.LinksUp)
	}
	if st := snap.LinkStates[0]; st.Name != "serial:"+path || st.Up || st.Error != "no such device" || st.Hint == "" || st.Since.IsZero() {
		t.Fatalf("state of a missing port: %+v", st)
	}

	master, tty := openPty(t)
	defer master.Close() // referenced to the end: a collected master hangs the terminal up
	if err := os.Symlink(tty, path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return d.Snapshot(context.Background()).LinksUp == 1 })
	st := d.LinkStates()[0]
	if !st.Up || st.Error != "" || st.Hint != "" {
		t.Fatalf("state of an open port: %+v", st)
	}
	if n := logs.count(slog.LevelInfo, "serial port open"); n != 1 {
		t.Fatalf("%d 'serial port open' lines", n)
	}
}

// A glob that matches nothing is one entry, down, named by the pattern,
// and said once however many scans find nothing.
func TestSerialGlobMatchingNothing(t *testing.T) {
	pattern := filepath.Join(t.TempDir(), "ttyUSB*")
	logs := &logRecords{}
	sc, err := ParseSerial(pattern)
	if err != nil {
		t.Fatal(err)
	}
	l := NewSerialLink(sc, slog.New(logs))
	l.scan = 10 * time.Millisecond
	d, err := New(Config{}, &testEngine{}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, l) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond) // several scans
	if n := logs.count(slog.LevelWarn, "no serial port matches"); n != 1 {
		t.Fatalf("%d WARN lines for an empty glob, want 1", n)
	}
	states := d.LinkStates()
	if len(states) != 1 || states[0].Up || states[0].Name != "serial:"+pattern || !strings.Contains(states[0].Error, "no port matches") {
		t.Fatalf("states %+v", states)
	}
}

// The cause and hint of each way opening fails, from real opens where the
// test can make them (root opens anything, so EACCES is a wrapped errno).
func TestOpenCauseAndHint(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	openErr := func(path string) error {
		p, err := serial.Open(path, &serial.Mode{BaudRate: 115200})
		if err == nil {
			p.Close()
			t.Fatalf("%s opened as a serial port", path)
		}
		return err
	}
	for _, tc := range []struct {
		name      string
		err       error
		cause     string
		hintHas   string
		wantNoHnt bool
	}{
		{"missing", openErr(filepath.Join(dir, "none")), "no such device", "enable_uart=1", false},
		{"directory", openErr(dir), "is a directory, not a serial port", "", true},
		{"plain file", openErr(file), "not a serial port (it has no terminal settings)", "", true},
		{"permission", &os.PathError{Op: "open", Path: "/dev/ttyAMA0", Err: syscall.EACCES}, "permission denied", "dialout", false},
		{"busy", fmt.Errorf("wrapped: %w", syscall.EBUSY), "port busy", "ModemManager", false},
		{"other", errors.New("odd failure"), "odd failure", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := openCause(tc.err); got != tc.cause {
				t.Errorf("cause of %v = %q, want %q", tc.err, got, tc.cause)
			}
			hint := serialHint(tc.err)
			if tc.wantNoHnt != (hint == "") || !strings.Contains(hint, tc.hintHas) {
				t.Errorf("hint for %v = %q, want one with %q", tc.err, hint, tc.hintHas)
			}
		})
	}
}
