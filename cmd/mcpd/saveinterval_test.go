package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWarmSaveIntervalConfig: [cache] warm_save_interval, apart from
// save_interval, comes from the file, --warm-save-interval wins over it,
// unset it is 1h (save_interval still 5m); --check-config shows both and
// prepare hands both to the daemon; a negative one is refused by its key
// name.
func TestWarmSaveIntervalConfig(t *testing.T) {
	model := tinyModel(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name        string
		file        string
		args        []string
		chats, warm time.Duration
	}{
		{"defaults", "", nil, 5 * time.Minute, time.Hour},
		{"file", "[cache]\nwarm_save_interval = \"10m\"\n", nil, 5 * time.Minute, 10 * time.Minute},
		{"flag over the file", "[cache]\nsave_interval = \"1m\"\nwarm_save_interval = \"10m\"\n",
			[]string{"--warm-save-interval", "0s"}, time.Minute, 0},
		{"flag alone", "", []string{"--warm-save-interval", "30m", "--save-interval", "2m"}, 2 * time.Minute, 30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".toml")
			if err := os.WriteFile(path, []byte("model = \""+model+"\"\n"+tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			var out syncBuffer
			args := append([]string{"--config", path, "--listen-udp", "127.0.0.1:0", "--check-config"}, tc.args...)
			if err := run(context.Background(), args, noEnv, &out, &out); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{" save_interval = \"" + tc.chats.String() + `"`, `warm_save_interval = "` + tc.warm.String() + `"`} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("--check-config lacks %q:\n%s", want, out.String())
				}
			}

			// The same through the pieces run uses: the file, the flags set.
			cfg := defaultConfig()
			if err := cfg.loadFile(path, true); err != nil {
				t.Fatal(err)
			}
			fs := flag.NewFlagSet("mcpd", flag.ContinueOnError)
			applyFlags := cacheFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			set := map[string]bool{}
			fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
			applyFlags(&cfg, set)
			p, err := prepare(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if p.daemon.SaveInterval != tc.chats || p.daemon.WarmSaveInterval != tc.warm {
				t.Errorf("daemon saves conversations every %v, the warm file every %v; want %v, %v",
					p.daemon.SaveInterval, p.daemon.WarmSaveInterval, tc.chats, tc.warm)
			}
		})
	}

	var out syncBuffer
	err := run(context.Background(), []string{"--listen-udp", "127.0.0.1:0", "--check-config", "--model", model,
		"--warm-save-interval", "-1s"}, noEnv, &out, &out)
	if want := "cache warm_save_interval -1s: want 0 (off) or more"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want an error with %q", err, want)
	}
}
