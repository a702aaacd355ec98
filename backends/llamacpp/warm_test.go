package llamacpp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native/gguf"
)

// logBuffer collects an engine's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) lines(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), substr)
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// warmChat is the conversation the warm cache tests play: two devices
// sharing a system prompt, the first over two turns.
func warmChat(t *testing.T, e *Engine) (chats []*chat) {
	t.Helper()
	a := &chat{msgs: []backends.Message{{Role: backends.RoleSystem, Content: systemPrompt}}}
	b := &chat{msgs: []backends.Message{{Role: backends.RoleSystem, Content: systemPrompt}}}
	a.turn(t, e, "What is the temperature in the east bed right now, please?")
	b.turn(t, e, "Humidity?")
	a.turn(t, e, "And in the west bed?")
	return []*chat{a, b}
}

// TestWarmRestart: an engine that closes saves its sequences' caches; the
// next one on the same model loads them, and an old conversation's next
// turn then evaluates only what it adds — with the greedy answer of an
// engine that evaluates it whole.
func TestWarmRestart(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	warm := filepath.Join(t.TempDir(), "warm.kv")
	cfg := Config{Parallel: 3, SequenceContext: 512, WarmFile: warm}
	first := newEngine(t, path, cfg)
	chats := warmChat(t, first)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(warm); err != nil || fi.Size() == 0 {
		t.Fatalf("no warm file after Close: %v", err)
	}
	var logs logBuffer
	cfg.Logger = logs.logger()
	second := newEngine(t, path, cfg)
	if n := logs.lines("warm cache loaded"); n != 1 {
		t.Fatalf("%d 'warm cache loaded' lines:\n%s", n, logs.buf.String())
	}
	whole := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512, NoKVReuse: true})
	for i, c := range chats {
		prev := len(c.msgs)
		cold := &chat{msgs: append([]backends.Message(nil), c.msgs...)}
		got, res := c.turn(t, second, "Soil moisture?")
		want, wantRes := cold.turn(t, whole, "Soil moisture?")
		if got != want || res.Tokens != wantRes.Tokens {
			t.Errorf("chat %d after the restart: %q, evaluated whole: %q", i, got, want)
		}
		// Everything but the new message (and the last token, evaluated
		// again for its logits) came from the file.
		if res.PromptCached < res.PromptTokens/2 || res.PromptCached == 0 {
			t.Errorf("chat %d (%d messages before): %d of %d prompt tokens cached after the restart", i, prev,
				res.PromptCached, res.PromptTokens)
		}
	}
	if st := second.Stats(); st.WarmLoaded == 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestWarmRefused: a warm file that is corrupt, truncated, of another
// version, model or layout is refused with one log line; the engine starts
// cold and answers as one that never saw the file.
func TestWarmRefused(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	other := writeModel(t, gguf.TinySpec(2))
	dir := t.TempDir()
	src := filepath.Join(dir, "good.kv")
	cfg := Config{Parallel: 3, SequenceContext: 512, WarmFile: src}
	first := newEngine(t, path, cfg)
	warmChat(t, first)
	first.Close()
	good, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x10
		return b
	}
	cases := []struct {
		name  string
		file  []byte
		model string
		cfg   Config
	}{
		{"state byte flipped", flip(len(good) / 2), path, cfg},
		{"header byte flipped", flip(20), path, cfg},
		{"version", flip(8), path, cfg},
		{"truncated", good[:len(good)-1000], path, cfg},
		{"header only", good[:64], path, cfg},
		{"garbage", bytes.Repeat([]byte("mcpd"), 1000), path, cfg},
		{"empty", nil, path, cfg},
		{"another model", good, other, cfg},
		{"another layout", good, path, Config{Parallel: 2, SequenceContext: 512}},
		{"another context", good, path, Config{Parallel: 3, SequenceContext: 256}},
	}
	whole := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512, NoKVReuse: true})
	want, _ := (&chat{}).turn(t, whole, "What is the temperature in the east bed right now, please?")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "warm.kv")
			if err := os.WriteFile(file, c.file, 0o600); err != nil {
				t.Fatal(err)
			}
			var logs logBuffer
			cfg := c.cfg
			cfg.WarmFile, cfg.Logger = file, logs.logger()
			e := newEngine(t, c.model, cfg)
			if n := logs.lines("warm cache refused"); n != 1 {
				t.Fatalf("%d 'warm cache refused' lines:\n%s", n, logs.buf.String())
			}
			if st := e.Stats(); st.WarmLoaded != 0 {
				t.Fatalf("%d tokens loaded from a refused file", st.WarmLoaded)
			}
			got, res := (&chat{}).turn(t, e, "What is the temperature in the east bed right now, please?")
			if res.PromptCached != 0 {
				t.Errorf("%d prompt tokens cached from a refused file", res.PromptCached)
			}
			if c.model == path && got != want {
				t.Errorf("answer %q, cold: %q", got, want)
			}
		})
	}
}

// TestWarmBudget: a budget smaller than every sequence's state saves only
// the most recently used ones that fit, and none at all removes the file.
func TestWarmBudget(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	warm := filepath.Join(t.TempDir(), "warm.kv")
	e := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512, WarmFile: warm})
	warmChat(t, e)
	e.Close()
	all, err := os.Stat(warm)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		budget int64
		loaded bool
	}{{all.Size() - 1, true}, {100, false}} {
		var logs logBuffer
		e := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512, WarmFile: warm, WarmBudget: c.budget,
			Logger: logs.logger()})
		loaded := e.Stats().WarmLoaded
		if loaded == 0 {
			t.Fatalf("budget %d: nothing loaded:\n%s", c.budget, logs.buf.String())
		}
		e.Close()
		fi, err := os.Stat(warm)
		switch {
		case c.loaded && (err != nil || fi.Size() > c.budget || fi.Size() == 0):
			t.Fatalf("budget %d: file %v, %v", c.budget, fi, err)
		case !c.loaded && !os.IsNotExist(err):
			t.Fatalf("budget %d: a file remains (%v)", c.budget, err)
		}
	}
}

// TestWarmSaveWhileServing: SaveWarm copies the caches between two decode
// steps while a request generates, and an engine started from that file
// finds both conversations: the finished one and the one that was running.
func TestWarmSaveWhileServing(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	warm := filepath.Join(t.TempDir(), "warm.kv")
	cfg := Config{Parallel: 3, SequenceContext: 512, WarmFile: warm}
	e := newEngine(t, path, cfg)
	a := &chat{}
	a.turn(t, e, "What is the temperature in the east bed right now, please?")
	running := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		var once sync.Once
		_, err := e.Generate(context.Background(), greedyReq("Tell me a long story about the greenhouse.", 64),
			func([]byte) error { once.Do(func() { close(running) }); return nil })
		done <- err
	}()
	<-running
	if err := e.SaveWarm(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	cfg.Logger = logs.logger()
	second := newEngine(t, path, cfg)
	if !strings.Contains(logs.buf.String(), "sequences=2") {
		t.Fatalf("the running request's sequence was not saved:\n%s", logs.buf.String())
	}
	whole := newEngine(t, path, Config{Parallel: 3, SequenceContext: 512, NoKVReuse: true})
	cold := &chat{msgs: append([]backends.Message(nil), a.msgs...)}
	got, res := a.turn(t, second, "And in the west bed?")
	want, _ := cold.turn(t, whole, "And in the west bed?")
	if got != want || res.PromptCached < res.PromptTokens/2 {
		t.Fatalf("after SaveWarm: %q with %d of %d prompt tokens cached; evaluated whole: %q", got, res.PromptCached,
			res.PromptTokens, want)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.SaveWarm(context.Background()); !errors.Is(err, backends.ErrClosed) {
		t.Fatalf("SaveWarm after Close: %v", err)
	}
}

// TestWarmSaveOnlyWhenChanged: a save of caches the warm file holds
// already (a periodic save with no request since, an engine that loaded
// the file and served nothing, Close after a save) writes nothing; a new
// turn makes the next save write.
func TestWarmSaveOnlyWhenChanged(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	warm := filepath.Join(t.TempDir(), "warm.kv")
	var logs logBuffer
	cfg := Config{Parallel: 2, SequenceContext: 512, WarmFile: warm, Logger: logs.logger()}
	e := newEngine(t, path, cfg)
	a := &chat{}
	a.turn(t, e, "What is the temperature in the east bed right now, please?")
	save := func(e *Engine, want int) {
		t.Helper()
		if err := e.SaveWarm(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := logs.lines("warm cache saved"); n != want {
			t.Fatalf("%d saves, want %d:\n%s", n, want, logs.buf.String())
		}
	}
	save(e, 1)
	save(e, 1)
	a.turn(t, e, "And in the west bed?")
	save(e, 2)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if n := logs.lines("warm cache saved"); n != 2 {
		t.Fatalf("Close after a save wrote again:\n%s", logs.buf.String())
	}
	before, err := os.Stat(warm)
	if err != nil {
		t.Fatal(err)
	}
	idle := newEngine(t, path, cfg)
	save(idle, 2)
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(warm)
	if err != nil || logs.lines("warm cache saved") != 2 || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("an engine that served nothing rewrote the file (%v):\n%s", err, logs.buf.String())
	}
}
