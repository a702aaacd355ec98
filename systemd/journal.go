package systemd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// JournalSocket is where journald reads native-protocol datagrams.
const JournalSocket = "/run/systemd/journal/socket"

// NewLogHandler returns the handler mcpd logs through: the journal's native
// protocol when stderr is connected to the journal (JOURNAL_STREAM matches
// it, as under systemd), so each attribute becomes a field journalctl can
// filter on (journalctl -u mcpd DEVICE=esp32-kitchen); plain text on
// stderr otherwise. It reports which one it chose.
func NewLogHandler(stderr io.Writer, level slog.Leveler) (h slog.Handler, toJournal bool) {
	text := slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	if ok, err := journal.StderrIsJournalStream(); err != nil || !ok {
		return text, false
	}
	return NewJournalHandler(JournalSocket, "mcpd", level, text), true
}

// JournalHandler is a slog.Handler writing journald's native protocol
// (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) to a datagram socket.
// Each record becomes one entry: MESSAGE (the message followed by its
// attributes as key=value, so a plain journalctl line reads whole),
// PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC, and one field
// per attribute, its key upper-cased ("device" → DEVICE, group "engine"
// key "threads" → ENGINE_THREADS). When the journal cannot take an entry
// it goes to the fallback handler instead, so nothing is lost.
type JournalHandler struct {
	j        *journalConn
	ident    string
	level    slog.Leveler
	fallback slog.Handler
	prefix   string      // field-name prefix of the open groups
	attrs    []journalKV // from WithAttrs, already flattened
	text     []slog.Attr // the same, for MESSAGE and the fallback
	groups   []string
}

type journalKV struct{ key, value string }

// journalConn is the socket, dialled on first use and shared by every
// handler derived with WithAttrs/WithGroup.
type journalConn struct {
	path string
	once sync.Once
	conn *net.UnixConn
	err  error
}

// NewJournalHandler writes to the journal socket at path as ident
// (SYSLOG_IDENTIFIER), records below level dropped; fallback takes what
// the journal refuses.
func NewJournalHandler(path, ident string, level slog.Leveler, fallback slog.Handler) *JournalHandler {
	if level == nil {
		level = slog.LevelInfo
	}
	return &JournalHandler{j: &journalConn{path: path}, ident: ident, level: level, fallback: fallback}
}

func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *JournalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]journalKV(nil), h.attrs...), flatten(h.prefix, as)...)
	c.text = append(append([]slog.Attr(nil), h.text...), groupAttrs(h.groups, as)...)
	if h.fallback != nil {
		c.fallback = h.fallback.WithAttrs(as)
	}
	return &c
}

func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix = h.prefix + fieldName(name) + "_"
	c.groups = append(append([]string(nil), h.groups...), name)
	if h.fallback != nil {
		c.fallback = h.fallback.WithGroup(name)
	}
	return &c
}

// groupAttrs nests as inside the open groups, for the MESSAGE text.
func groupAttrs(groups []string, as []slog.Attr) []slog.Attr {
	for i := len(groups) - 1; i >= 0; i-- {
		as = []slog.Attr{slog.Attr{Key: groups[i], Value: slog.GroupValue(as...)}}
	}
	return as
}

func (h *JournalHandler) Handle(ctx context.Context, r slog.Record) error {
	var own []slog.Attr
	r.Attrs(func(a slog.Attr) bool { own = append(own, a); return true })

	var msg strings.Builder
	msg.WriteString(r.Message)
	for _, a := range append(append([]slog.Attr(nil), h.text...), groupAttrs(h.groups, own)...) {
		appendText(&msg, "", a)
	}
	var b bytes.Buffer
	put(&b, "MESSAGE", msg.String())
	put(&b, "PRIORITY", strconv.Itoa(int(priority(r.Level))))
	put(&b, "SYSLOG_IDENTIFIER", h.ident)
	if r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		put(&b, "CODE_FILE", f.File)
		put(&b, "CODE_LINE", strconv.Itoa(f.Line))
		put(&b, "CODE_FUNC", f.Function)
	}
	for _, kv := range h.attrs {
		put(&b, kv.key, kv.value)
	}
	for _, kv := range flatten(h.prefix, own) {
		put(&b, kv.key, kv.value)
	}
	err := h.j.write(b.Bytes())
	if err != nil && h.fallback != nil {
		return errors.Join(fmt.Errorf("systemd: journal: %w", err), h.fallback.Handle(ctx, r))
	}
	return err
}

func (j *journalConn) write(entry []byte) error {
	j.once.Do(func() {
		j.conn, j.err = net.DialUnix("unixgram", nil, &net.UnixAddr{Name: j.path, Net: "unixgram"})
	})
	if j.err != nil {
		return j.err
	}
	_, err := j.conn.Write(entry)
	return err
}

// priority maps slog levels to syslog priorities.
func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}

// put appends one field: NAME=value\n, or, when the value has a newline,
// NAME\n + its length as 64-bit little endian + value + \n.
func put(b *bytes.Buffer, name, value string) {
	if !strings.Contains(value, "\n") {
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(value)
		b.WriteByte('\n')
		return
	}
	b.WriteString(name)
	b.WriteByte('\n')
	_ = binary.Write(b, binary.LittleEndian, uint64(len(value)))
	b.WriteString(value)
	b.WriteByte('\n')
}

// flatten turns attributes into fields; groups add a prefix.
func flatten(prefix string, as []slog.Attr) []journalKV {
	var out []journalKV
	for _, a := range as {
		v := a.Value.Resolve()
		if a.Key == "" && v.Kind() != slog.KindGroup {
			continue
		}
		if v.Kind() == slog.KindGroup {
			p := prefix
			if a.Key != "" {
				p += fieldName(a.Key) + "_"
			}
			out = append(out, flatten(p, v.Group())...)
			continue
		}
		out = append(out, journalKV{prefix + fieldName(a.Key), valueText(v)})
	}
	return out
}

// fieldName makes a journal field name: upper case letters, digits and
// underscores, not starting with an underscore or a digit (those are the
// journal's own), at most 64 bytes.
func fieldName(key string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(key) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := strings.TrimLeft(b.String(), "_")
	if name == "" || name[0] >= '0' && name[0] <= '9' {
		name = "F_" + name
	}
	return name[:min(len(name), 64)]
}

func valueText(v slog.Value) string {
	switch v.Kind() {
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindDuration:
		return v.Duration().String()
	}
	return v.String()
}

// appendText writes " key=value" as slog's text handler would, quoting
// values with spaces.
func appendText(b *strings.Builder, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			appendText(b, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	s := valueText(v)
	if s == "" || strings.ContainsAny(s, " \"=\n\t") {
		s = strconv.Quote(s)
	}
	b.WriteByte(' ')
	b.WriteString(prefix + a.Key)
	b.WriteByte('=')
	b.WriteString(s)
}
