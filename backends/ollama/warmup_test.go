package ollama

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/internal/ollamatest"
	"github.com/ollama/ollama/api"
)

// TestWarmUpAtStart: the engine asks Ollama to load the model when it
// starts, with the configured keep_alive, so the first chat does not wait
// for the load; with keep_alive 0 or NoWarmUp it does not, and the first
// chat pays for it.
func TestWarmUpAtStart(t *testing.T) {
	forever, never := -1*time.Second, time.Duration(0)
	for _, tc := range []struct {
		name    string
		cfg     Config
		loads   int
		wantKA  *time.Duration
		paidOne bool
	}{
		{"default", Config{}, 1, nil, false},
		{"keep_alive forever", Config{KeepAlive: &forever}, 1, &forever, false},
		{"keep_alive 0", Config{KeepAlive: &never}, 0, nil, true},
		{"no warm-up", Config{NoWarmUp: true}, 0, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := ollamatest.Start(t, ollamatest.Config{LoadDelay: 100 * time.Millisecond})
			o := newOllama(t, tc.cfg, srv)
			loads := srv.LoadRequests()
			if len(loads) != tc.loads || srv.Loaded("tiny") != (tc.loads > 0) {
				t.Fatalf("%d load requests, loaded %v after New; want %d", len(loads), srv.Loaded("tiny"), tc.loads)
			}
			if tc.loads > 0 {
				got := loads[0].KeepAlive
				// As Ollama decodes it: a negative keep_alive is forever.
				if (got == nil) != (tc.wantKA == nil) || (got != nil && got.Duration != asOllama(t, *tc.wantKA)) {
					t.Fatalf("load request keep_alive %v, want %v", got, tc.wantKA)
				}
				if loads[0].Model != "tiny" || loads[0].Prompt != "" {
					t.Fatalf("load request %+v", loads[0])
				}
			}
			if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); err != nil {
				t.Fatal(err)
			}
			if paid := srv.PaidLoads() == 1; paid != tc.paidOne {
				t.Fatalf("the first chat waited for the load: %v, want %v", paid, tc.paidOne)
			}
			if n := o.WarmUps()[srv.URL()]; n != int64(tc.loads) {
				t.Fatalf("WarmUps %d, want %d", n, tc.loads)
			}
		})
	}
}

// asOllama is d as Ollama's server decodes a request's keep_alive.
func asOllama(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	b, err := json.Marshal(api.Duration{Duration: d})
	if err != nil {
		t.Fatal(err)
	}
	var got api.Duration
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	return got.Duration
}

// TestWarmUpAfterRestart: an Ollama that restarts (unreachable, then back
// with nothing loaded) gets the model loaded again before any chat asks;
// so does one whose model vanished from /api/ps before its keep_alive ran
// out (a restart between two probes). A model unloaded after its
// keep_alive stays unloaded.
func TestWarmUpAfterRestart(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	// Long enough that a loaded box's probes see the early unload within
	// it; the last phase waits it out.
	keep := 1500 * time.Millisecond
	o := newOllama(t, Config{KeepAlive: &keep, ProbeInterval: 20 * time.Millisecond, BreakerCooldown: 40 * time.Millisecond,
		ConnectTimeout: 200 * time.Millisecond}, srv)
	if n := len(srv.LoadRequests()); n != 1 {
		t.Fatalf("%d load requests at start", n)
	}
	srv.Stop()
	time.Sleep(100 * time.Millisecond) // a few failed probes
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return srv.Loaded("tiny") })
	if n := len(srv.LoadRequests()); n != 2 || srv.Chats() != 0 {
		t.Fatalf("%d load requests, %d chats after the restart; want 2, 0", n, srv.Chats())
	}

	// Gone from /api/ps while its keep_alive still runs: loaded again.
	if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); err != nil {
		t.Fatal(err)
	}
	srv.Unload("tiny")
	waitFor(t, 5*time.Second, func() bool { return srv.Loaded("tiny") })
	if n := len(srv.LoadRequests()); n != 3 {
		t.Fatalf("%d load requests after an early unload; want 3", n)
	}

	// Unloaded after its keep_alive: stays unloaded.
	time.Sleep(keep + 100*time.Millisecond)
	srv.Unload("tiny")
	time.Sleep(10 * 20 * time.Millisecond) // ten probes
	if srv.Loaded("tiny") || len(srv.LoadRequests()) != 3 {
		t.Fatalf("the model was loaded again after its keep_alive ran out (%d load requests)", len(srv.LoadRequests()))
	}
}
