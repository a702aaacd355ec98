//go:build cgo

package backends_test

import (
	"context"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/llamacpp"
)

// TestResponseCacheOnLlama: with a response cache, a deterministic request
// asked again is answered with the same bytes without a decode step; a
// sampled one always runs the model; any option that changes the answer
// is another entry.
func TestResponseCacheOnLlama(t *testing.T) {
	s := openSelector(t, backends.OpenConfig{Policy: backends.PolicyNative, Detector: cpuMachine(t), Native: tinyNative(t),
		ResponseCache: 1 << 20})
	engine := s.Engine(backends.PolicyNative).(*llamacpp.Engine)
	seeded := chatReq("sensor 7 humidity 40%")
	seeded.Options = backends.Options{MaxTokens: 12, Seed: 42, SeedSet: true, Temperature: 0.9, TemperatureSet: true}
	longer := greedyReq("Hello, world", 13)
	stop := greedyReq("Hello, world", 12)
	stop.Options.Stop = []string{"zz"}
	tests := []struct {
		name   string
		req    backends.Request
		cached bool // the second ask comes from the cache
	}{
		{"greedy", greedyReq("Hello, world", 12), true},
		{"seeded", seeded, true},
		{"sampled", chatReq("Hello, world"), false},
		{"other max tokens", longer, true},
		{"stop string", stop, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.CacheStats()
			first, res1, err := collectPieces(context.Background(), s, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			steps := engine.Stats().Steps
			second, res2, err := collectPieces(context.Background(), s, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			after := s.CacheStats()
			ran := engine.Stats().Steps > steps
			if ran == tc.cached {
				t.Errorf("second ask ran the model: %v, want %v", ran, !tc.cached)
			}
			if tc.cached {
				if strings.Join(second, "") != strings.Join(first, "") || res2.Tokens != res1.Tokens || res2.Stop != res1.Stop ||
					res2.PromptTokens != res1.PromptTokens {
					t.Errorf("from the cache %q %+v, first %q %+v", second, res2, first, res1)
				}
				if after.Hits != before.Hits+1 || after.Misses != before.Misses+1 {
					t.Errorf("hits %d → %d, misses %d → %d", before.Hits, after.Hits, before.Misses, after.Misses)
				}
			} else if after.Skipped != before.Skipped+2 || after.Hits != before.Hits {
				t.Errorf("sampled: skipped %d → %d, hits %d → %d", before.Skipped, after.Skipped, before.Hits, after.Hits)
			}
		})
	}
	st := s.CacheStats()
	if st.Entries != 4 || st.Bytes <= 0 || st.Budget != 1<<20 || st.Evictions != 0 {
		t.Errorf("stats %+v", st)
	}
	if st.KV.PromptTokens == 0 || st.KV.PromptCached == 0 {
		t.Errorf("no KV reuse reported: %+v", st.KV)
	}
}
