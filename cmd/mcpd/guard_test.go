package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigPolicy: the [policy] table and the hostile-peer limits reach
// the daemon's configuration; a bad network is an error naming it.
func TestConfigPolicy(t *testing.T) {
	model := tinyModel(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, conf string
		want       []string // in --check-config's output; nil: an error containing errWant
		errWant    string
	}{
		{"policy", "[limits]\npeer_rate = 20\npeer_burst = 8\nmax_per_device = 2\n" +
			"[policy]\nnetworks = [\"192.168.4.7/24\"]\nonly_listed = true\n" +
			"[policy.devices.pump]\nmodels = [\"tiny\"]\ntoken_budget = 500\nbudget_period = \"1h\"\n",
			[]string{"peer_rate = 20.0", "peer_burst = 8", "max_per_device = 2", `networks = ["192.168.4.0/24"]`, "only_listed = true",
				"[policy.devices.pump]", `models = ["tiny"]`, "token_budget = 500", `budget_period = "1h0m0s"`}, ""},
		{"bad network", "[policy]\nnetworks = [\"192.168.4\"]\n", nil, "192.168.4"},
		{"bad device id", "[policy.devices.\"\"]\ntoken_budget = 1\n", nil, "device id"},
		{"negative budget", "[policy.devices.pump]\ntoken_budget = -1\n", nil, "negative budget"},
		{"typo", "[policy]\nnetwork = []\n", nil, "unknown keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".toml")
			if err := os.WriteFile(path, []byte("model = \""+model+"\"\n"+tc.conf), 0o600); err != nil {
				t.Fatal(err)
			}
			var out syncBuffer
			err := run(context.Background(), []string{"--config", path, "--check-config"}, noEnv, &out, &out)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), tc.errWant) {
					t.Fatalf("got %v, want an error about %q", err, tc.errWant)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("--check-config output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}
