package llamacpp

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"testing"

	"github.com/mcpd-project/mcpd/native/gguf"
)

// TestReserveCores: Go keeps the cores the decode threads leave plus one,
// computed from the runtime's default each call (so a second call with
// fewer threads gives cores back), and greedy output is the same.
func TestReserveCores(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set in the environment: ReserveCores leaves it alone")
	}
	t.Cleanup(func() { runtime.SetDefaultGOMAXPROCS() })
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	if def < 2 {
		t.Skip("one CPU: nothing to reserve")
	}
	path := writeModel(t, gguf.TinySpec(1))
	want, _, err := collect(t, newEngine(t, path, Config{}), context.Background(), greedyReq("Hello", 24))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name    string
		threads int
		procs   int
	}{
		{"every core", def, 1},
		{"default threads", 0, max(1, def-runtime.NumCPU()+1)},
		{"one core", 1, def},
		{"every core again", def, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ReserveCores(tc.threads, log); got != tc.procs {
				t.Errorf("ReserveCores(%d) = %d, want %d", tc.threads, got, tc.procs)
			}
			if got := runtime.GOMAXPROCS(0); got != tc.procs {
				t.Errorf("GOMAXPROCS %d, want %d", got, tc.procs)
			}
			got, _, err := collect(t, newEngine(t, path, Config{Threads: max(tc.threads, 1)}), context.Background(),
				greedyReq("Hello", 24))
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("greedy text %q, want %q", got, want)
			}
		})
	}
}
