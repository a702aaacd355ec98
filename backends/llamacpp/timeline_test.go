package llamacpp

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native/gguf"
)

// TestTimeline checks the timeline a request fills on its way to its
// first token: its instants in order, the prompt's tokens, what the KV
// cache held, the steps that carried it, and the requests beside it.
func TestTimeline(t *testing.T) {
	e := newEngine(t, writeModel(t, gguf.TinySpec(1)), Config{Threads: 1, Parallel: 2})
	ask := func(ctx context.Context) (Timeline, int) {
		t.Helper()
		var tl Timeline
		_, res, err := collect(t, e, WithTimeline(ctx, &tl), greedyReq("Hello there, how are you", 8))
		if err != nil {
			t.Fatal(err)
		}
		return tl, res.PromptTokens
	}
	inOrder := func(tl Timeline) {
		t.Helper()
		at := []time.Time{tl.Start, tl.Queued, tl.Admitted, tl.FirstStepStart, tl.FirstStepEnd, tl.FirstEmit}
		for i := range at {
			if at[i].IsZero() || i > 0 && at[i].Before(at[i-1]) {
				t.Fatalf("instants out of order or missing at %d: %+v", i, tl)
			}
		}
	}
	tl, prompt := ask(context.Background())
	inOrder(tl)
	if tl.Prompt != prompt || tl.Reused != 0 || tl.PrefillSteps < 1 || tl.FirstStepSeqs != 1 || tl.Running != 0 {
		t.Errorf("first request: %+v, %d prompt tokens", tl, prompt)
	}
	if tl.FirstStepTokens != prompt { // the whole prompt fits one chunk
		t.Errorf("first step %d tokens, prompt %d", tl.FirstStepTokens, prompt)
	}
	// The same prompt again: all but its last token cached, one step.
	tl, _ = ask(context.Background())
	inOrder(tl)
	if tl.Reused != prompt-1 || tl.PrefillSteps != 1 || tl.FirstStepTokens != 1 {
		t.Errorf("repeated request: %+v", tl)
	}
	if tl.PrevStepEnd.IsZero() || tl.PrevStepTokens != 1 {
		t.Errorf("the step before admission is missing: %+v", tl)
	}

	// Beside a running request: it is counted, and shares the step.
	release := make(chan struct{})
	started := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var once sync.Once
		_, err := e.Generate(context.Background(), greedyReq("A long answer please", 64), func([]byte) error {
			once.Do(func() { close(started) })
			<-release
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
	<-started
	// The blocked emit holds the other sequence back only after its
	// backlog fills; until then it keeps generating beside this one.
	tl, _ = ask(context.Background())
	close(release)
	wg.Wait()
	inOrder(tl)
	if tl.Running != 1 {
		t.Errorf("beside a running request: %+v", tl)
	}
}

// TestTimelineLog checks the debug line that the timeline makes, and that
// without debug no request fills one.
func TestTimelineLog(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		var buf logBuffer
		e := newEngine(t, path, Config{Threads: 1, Parallel: 2,
			Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level}))})
		var traced bool
		for range 2 {
			if _, err := e.Generate(context.Background(), greedyReq("Hello", 4), func([]byte) error {
				traced = traced || e.tracing.Load() > 0
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		want := 0
		if level == slog.LevelDebug {
			want = 2
		}
		if n := buf.lines("llama.cpp request timeline"); n != want || traced != (want > 0) {
			t.Errorf("level %v: %d timeline lines, traced %v; want %d", level, n, traced, want)
		}
		if want > 0 && !strings.Contains(buf.buf.String(), "reused=") {
			t.Errorf("level %v: the line lacks the cache figure:\n%s", level, buf.buf.String())
		}
		e.Close()
		if e.tracing.Load() != 0 {
			t.Errorf("level %v: %d requests still tracing", level, e.tracing.Load())
		}
	}
}

// TestFirstTokensFirst checks the step new requests get beside a
// generating one (firstTokensFirst): one newcomer's cached prompt's last
// token alone, the other sitting it out — or, merged, both in one step;
// two newcomers (more new tokens than sequences generating) merge — and
// that no answer changes.
func TestFirstTokensFirst(t *testing.T) {
	path := writeModel(t, gguf.TinySpec(1))
	long, short := greedyReq("Tell me a long story about the sea", 48), greedyReq("Hello there, how are you", 8)
	alone := newEngine(t, path, Config{Threads: 1, Parallel: 1})
	var want [2]string
	for i, r := range []backends.Request{long, short} {
		text, _, err := collect(t, alone, context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = text
	}
	alone.Close()
	for _, tc := range []struct {
		name      string
		newcomers int
		merged    bool
		wantSeqs  int // sampled in the newcomers' first step
	}{
		{"one newcomer, first tokens first", 1, false, 1},
		{"one newcomer, merged", 1, true, 2},
		{"two newcomers beside one", 2, false, 3},
	} {
		// The newcomers are queued from the hook once the long request
		// generates, so the scheduler admits them beside it, together.
		var e *Engine
		var armed atomic.Bool // after the warm-up request
		trigger := make(chan struct{})
		var once sync.Once
		hook := func(func() int) {
			if !armed.Load() || e.steps.Load() < 3 {
				return
			}
			once.Do(func() {
				close(trigger)
				for deadline := time.Now().Add(5 * time.Second); len(e.queue) < tc.newcomers && time.Now().Before(deadline); {
					runtime.Gosched()
				}
			})
		}
		e = newEngine(t, path, Config{Threads: 1, Parallel: 3, beforeStep: hook,
			mergeFirstTokens: func() bool { return tc.merged }})
		if _, _, err := collect(t, e, context.Background(), short); err != nil { // its prompt into the cache
			t.Fatal(err)
		}
		e.steps.Store(0)
		armed.Store(true)
		got := make([]string, 1+tc.newcomers)
		tls := make([]Timeline, tc.newcomers)
		var wg sync.WaitGroup
		wg.Go(func() {
			var err error
			if got[0], _, err = collect(t, e, context.Background(), long); err != nil {
				t.Error(err)
			}
		})
		<-trigger
		for i := range tc.newcomers {
			wg.Go(func() {
				var err error
				if got[1+i], _, err = collect(t, e, WithTimeline(context.Background(), &tls[i]), short); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		for i, g := range got {
			if w := want[min(i, 1)]; g != w {
				t.Errorf("%s: answer %d %q, alone %q", tc.name, i, g, w)
			}
		}
		for _, tl := range tls {
			if tl.FirstStepSeqs != tc.wantSeqs || tl.FirstStepTokens != tc.wantSeqs || tl.Running < 1 {
				t.Errorf("%s: the first token's step had %d tokens, %d sequences (want %d) beside %d running",
					tc.name, tl.FirstStepTokens, tl.FirstStepSeqs, tc.wantSeqs, tl.Running)
			}
		}
		e.Close()
	}
}
