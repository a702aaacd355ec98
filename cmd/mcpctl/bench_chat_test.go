package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
)

// historyEngine is wordEngine recording how many messages each request
// carried.
type historyEngine struct {
	wordEngine
	mu     sync.Mutex
	msgs   []int
	firsts []string
}

func (e *historyEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	e.mu.Lock()
	e.msgs = append(e.msgs, len(req.Messages))
	e.firsts = append(e.firsts, req.Messages[0].Content)
	e.mu.Unlock()
	return e.wordEngine.Generate(ctx, req, emit)
}

// The chat scenario holds conversations: NEW_CHAT, then turns the daemon
// adds to the history; every conversation opens with its own question;
// time to first token is reported by turn.
func TestBenchChatScenario(t *testing.T) {
	e := &historyEngine{}
	addr := startDaemon(t, e)
	md := filepath.Join(t.TempDir(), "r.md")
	out, errOut, err := runCmd(t, "", "bench", "--udp", addr, "--scenario", "chat", "--turns", "3", "--requests", "6",
		"--warmup", "0", "--duration", "10s", "--json", "--markdown", md)
	if err != nil {
		t.Fatalf("%v %s", err, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Scenarios) != 1 {
		t.Fatalf("scenarios %+v", rep.Scenarios)
	}
	s := rep.Scenarios[0]
	if s.Name != "chat" || s.Requests != 6 || len(s.Errors) != 0 || len(s.TurnTTFTp50) != 3 || s.LastOverFirst <= 0 {
		t.Fatalf("chat: %+v", s)
	}
	for i, v := range s.TurnTTFTp50 {
		if v <= 0 {
			t.Fatalf("turn %d: no time to first token", i+1)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if want := []int{1, 3, 5, 1, 3, 5}; !slices.Equal(e.msgs, want) {
		t.Fatalf("messages per request %v, want %v (history growing, NEW_CHAT every 3 turns)", e.msgs, want)
	}
	if e.firsts[0] == e.firsts[3] {
		t.Fatalf("two conversations opened alike: %q", e.firsts[0])
	}
	text, err := os.ReadFile(md)
	if err != nil || !strings.Contains(string(text), "Turn 3 ÷ turn 1") {
		t.Fatalf("markdown: %v\n%s", err, text)
	}
}

// TestRunEnded: a request the device ended because the run's deadline had
// passed is not an error, even before the run's context says it is done
// (its timer may fire later than the device noticed the deadline).
func TestRunEnded(t *testing.T) {
	runCtx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("ask: %w", context.DeadlineExceeded), true},
		{context.Canceled, true},
		{device.ErrTimeout, false},
		{errors.New("read udp: connection refused"), false},
	} {
		if got := runEnded(runCtx, tc.err); got != tc.want {
			t.Errorf("runEnded(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	cancel()
	if !runEnded(runCtx, device.ErrTimeout) {
		t.Error("a request cut by the run's end counted as an error")
	}
}
