package systemd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// journalSocket listens where journald would, and parses what arrives.
func journalSocket(t *testing.T) (string, func() map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return path, func() map[string]string {
		t.Helper()
		buf := make([]byte, 1<<16)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no journal entry: %v", err)
		}
		fields, err := parseNative(buf[:n])
		if err != nil {
			t.Fatalf("%v in %q", err, buf[:n])
		}
		return fields
	}
}

// parseNative reads the journal native protocol, as journald does.
func parseNative(b []byte) (map[string]string, error) {
	fields := map[string]string{}
	for len(b) > 0 {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil, fmt.Errorf("unterminated field")
		}
		line := b[:nl]
		if eq := bytes.IndexByte(line, '='); eq >= 0 {
			fields[string(line[:eq])] = string(line[eq+1:])
			b = b[nl+1:]
			continue
		}
		b = b[nl+1:]
		if len(b) < 8 {
			return nil, fmt.Errorf("binary field %s without length", line)
		}
		n := binary.LittleEndian.Uint64(b)
		if uint64(len(b)) < 8+n+1 || b[8+n] != '\n' {
			return nil, fmt.Errorf("binary field %s: bad length %d", line, n)
		}
		fields[string(line)] = string(b[8 : 8+n])
		b = b[8+n+1:]
	}
	return fields, nil
}

func TestJournalHandlerFields(t *testing.T) {
	path, next := journalSocket(t)
	log := slog.New(NewJournalHandler(path, "mcpd", slog.LevelInfo, nil)).With("link", "udp:127.0.0.1:7700")
	log.Info("session opened", "device", "esp32-kitchen", "max_data", 48)
	f := next()
	want := map[string]string{
		"MESSAGE":           "session opened link=udp:127.0.0.1:7700 device=esp32-kitchen max_data=48",
		"PRIORITY":          "6",
		"SYSLOG_IDENTIFIER": "mcpd",
		"LINK":              "udp:127.0.0.1:7700",
		"DEVICE":            "esp32-kitchen",
		"MAX_DATA":          "48",
	}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("%s = %q, want %q", k, f[k], v)
		}
	}

	log.WithGroup("engine").Error("decode failed", "err", "line one\nline two", slog.Duration("after", 1500*time.Millisecond))
	f = next()
	if f["PRIORITY"] != "3" || f["ENGINE_ERR"] != "line one\nline two" || f["ENGINE_AFTER"] != "1.5s" || f["LINK"] != "udp:127.0.0.1:7700" {
		t.Errorf("grouped, multi-line entry: %q", f)
	}
	if !strings.Contains(f["MESSAGE"], `engine.err="line one\nline two"`) {
		t.Errorf("MESSAGE %q", f["MESSAGE"])
	}

	log.Debug("below the level")
	log.Warn("odd keys", "1st", "a", "_hidden", "b", "dash-key", "c")
	f = next()
	if f["PRIORITY"] != "4" || f["F_1ST"] != "a" || f["HIDDEN"] != "b" || f["DASH_KEY"] != "c" {
		t.Errorf("field names: %q", f)
	}
}

// TestJournalHandlerFallsBack: with no journal listening, records go to
// the fallback handler, not nowhere.
func TestJournalHandlerFallsBack(t *testing.T) {
	var text bytes.Buffer
	fallback := slog.NewTextHandler(&text, nil)
	h := NewJournalHandler(filepath.Join(t.TempDir(), "no-journal"), "mcpd", slog.LevelInfo, fallback)
	slog.New(h).Info("still logged", "device", "d1")
	if !strings.Contains(text.String(), `msg="still logged" device=d1`) {
		t.Fatalf("fallback got %q", text.String())
	}
}

// TestNewLogHandlerDetectsTheJournal: JOURNAL_STREAM naming stderr's
// device and inode selects the journal; anything else is plain text.
func TestNewLogHandlerDetectsTheJournal(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(os.Stderr.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	if _, journal := NewLogHandler(&buf, slog.LevelInfo); !journal {
		t.Fatal("JOURNAL_STREAM matches stderr, but the journal was not chosen")
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1))
	if _, journal := NewLogHandler(&buf, slog.LevelInfo); journal {
		t.Fatal("JOURNAL_STREAM names another file, but the journal was chosen")
	}
	t.Setenv("JOURNAL_STREAM", "")
	h, journal := NewLogHandler(&buf, slog.LevelInfo)
	slog.New(h).Info("plain")
	if journal || !strings.Contains(buf.String(), "msg=plain") {
		t.Fatalf("without JOURNAL_STREAM: journal=%v, %q", journal, buf.String())
	}
}
