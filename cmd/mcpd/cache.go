package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/backends"
)

// cacheSection is [cache] (docs/caching.md): what the engines keep of the
// work they did, so that a conversation's next turn and a repeated request
// do not pay for it again.
type cacheSection struct {
	// Responses answers deterministic requests (greedy or with a seed)
	// seen before from memory; off by default, on for --cache.
	Responses bool `toml:"responses"`
	// BudgetMiB bounds the caches together: the response cache's answers
	// and the KV caches the in-process engine keeps for conversations
	// between turns, least recently used out first in each. Unset: the
	// response cache gets 64 MiB and the KV caches the cells the engine
	// allocated at start.
	BudgetMiB int `toml:"budget_mib"`
	// NoKVReuse makes the in-process engine evaluate every prompt whole
	// instead of reusing what a sequence holds (for comparisons).
	NoKVReuse bool `toml:"no_kv_reuse"`
	// StateDir is where the in-process engine keeps its warm cache
	// (WarmFileName): default $STATE_DIRECTORY, which systemd's
	// StateDirectory=mcpd sets to /var/lib/mcpd; none, no warm cache.
	StateDir string `toml:"state_dir"`
	// NoWarm turns the warm cache off: the engine then starts cold after
	// every restart.
	NoWarm bool `toml:"no_warm"`
	// WarmMiB bounds the warm file (default 256): the most recently used
	// conversations' caches that fit are saved. It bounds the devices'
	// saved conversations (ChatFileName) too.
	WarmMiB int `toml:"warm_mib"`
	// SaveInterval saves the devices' conversations that often while
	// serving, when they changed (default 5m; "0s": only at stop and
	// reload), so a crash loses at most that much of them.
	SaveInterval *duration `toml:"save_interval"`
	// WarmSaveInterval saves the warm file that often while serving, when
	// it changed (default 1h; "0s": only at stop and reload). Longer than
	// SaveInterval: the file is the engine's KV caches, megabytes written
	// whole at each save (flash wear), and a stale one still serves a
	// resumed conversation's older turns (docs/caching.md §1d).
	WarmSaveInterval *duration `toml:"warm_save_interval"`
	// ResumeUnsigned lets an unsigned UDP device resume its conversation
	// by its id alone (docs/protocol.md §10): only on a network where no
	// one else can claim a device's id.
	ResumeUnsigned bool `toml:"resume_unsigned"`
}

const (
	defaultCacheMiB = 64
	defaultWarmMiB  = 256
	// WarmFileName is the warm cache's file in the state directory.
	WarmFileName = "kv-warm.mcpdkv"
	// ChatFileName is the devices' saved conversations in the state
	// directory (daemon/chatstate).
	ChatFileName        = "chats.mcpdch"
	defaultSaveInterval = 5 * time.Minute
	// defaultWarmSaveInterval: the 135M model's 12 MiB warm file rewritten
	// every hour of activity is ≈ 0.3 GB a day, every 5 minutes ≈ 3.4 GB
	// (docs/caching.md §1d).
	defaultWarmSaveInterval = time.Hour
)

// chatFile is where the daemon saves the devices' conversations, "" when
// off: with the warm cache, whatever the engine.
func (c cacheSection) chatFile() string {
	if c.NoWarm || c.StateDir == "" {
		return ""
	}
	return filepath.Join(c.StateDir, ChatFileName)
}

// saveInterval is how often the conversations are saved while serving, 0
// off.
func (c cacheSection) saveInterval() time.Duration {
	return c.SaveInterval.or(defaultSaveInterval)
}

// warmSaveInterval is how often the warm file is saved while serving, 0
// off.
func (c cacheSection) warmSaveInterval() time.Duration {
	return c.WarmSaveInterval.or(defaultWarmSaveInterval)
}

// warmFile is the in-process engine's warm cache file, "" when off.
func (c cacheSection) warmFile() string {
	if c.NoWarm || c.NoKVReuse || c.StateDir == "" {
		return ""
	}
	return filepath.Join(c.StateDir, WarmFileName)
}

// warmBudget is the warm file's bound in bytes.
func (c cacheSection) warmBudget() int64 {
	mib := c.WarmMiB
	if mib <= 0 {
		mib = defaultWarmMiB
	}
	return int64(mib) << 20
}

// loadStateDir takes the state directory from $STATE_DIRECTORY (systemd
// sets it for StateDirectory=; several are separated by ':', the first is
// ours) unless the configuration names one.
func (c *cacheSection) loadStateDir(getenv func(string) string) {
	if c.StateDir == "" {
		c.StateDir, _, _ = strings.Cut(getenv("STATE_DIRECTORY"), ":")
	}
}

// budget is the caches' shared budget, nil when budget_mib is unset.
func (c cacheSection) budget() *backends.Budget {
	if c.BudgetMiB <= 0 {
		return nil
	}
	return backends.NewBudget(int64(c.BudgetMiB) << 20)
}

// responseBudget is the response cache's budget in bytes, 0 when off.
func (c cacheSection) responseBudget() int64 {
	if !c.Responses {
		return 0
	}
	mib := c.BudgetMiB
	if mib <= 0 {
		mib = defaultCacheMiB
	}
	return int64(mib) << 20
}

func (c cacheSection) validate() error {
	if c.BudgetMiB < 0 || c.BudgetMiB > 1<<20 {
		return fmt.Errorf("cache budget_mib %d: want 0..%d", c.BudgetMiB, 1<<20)
	}
	if c.WarmMiB < 0 || c.WarmMiB > 1<<20 {
		return fmt.Errorf("cache warm_mib %d: want 0..%d", c.WarmMiB, 1<<20)
	}
	if c.SaveInterval.or(0) < 0 {
		return fmt.Errorf("cache save_interval %v: want 0 (off) or more", c.SaveInterval.Duration)
	}
	if c.WarmSaveInterval.or(0) < 0 {
		return fmt.Errorf("cache warm_save_interval %v: want 0 (off) or more", c.WarmSaveInterval.Duration)
	}
	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("cache state_dir %q: want an absolute path", c.StateDir)
	}
	return nil
}

// cacheFlags defines the cache's flags; the function it returns applies
// those that were set.
func cacheFlags(fs *flag.FlagSet) func(cfg *config, set map[string]bool) {
	on := fs.Bool("cache", false, "answer deterministic requests (temperature 0 or a seed) seen before from memory")
	mib := fs.Int("cache-mib", 0, fmt.Sprintf("the caches' memory budget in MiB: answers (--cache) and the KV caches kept between turns (default: %d for answers, the KV cells as allocated)", defaultCacheMiB))
	noKV := fs.Bool("no-kv-reuse", false, "evaluate every prompt whole instead of reusing the engine's KV cache (for comparisons)")
	stateDir := fs.String("state-dir", "", "where the engine keeps its warm cache across restarts (default $STATE_DIRECTORY)")
	noWarm := fs.Bool("no-warm", false, "start cold: do not save the engine's KV caches and the devices' conversations at exit nor load them at start")
	every := fs.Duration("save-interval", defaultSaveInterval, "save the devices' conversations this often while serving, when they changed (0: only at stop and reload)")
	warmEvery := fs.Duration("warm-save-interval", defaultWarmSaveInterval, "save the warm cache this often while serving, when it changed (0: only at stop and reload); each save writes the whole file")
	history := fs.Int("max-history", 0, "chat messages (user and assistant) kept per device session (default 20)")
	return func(cfg *config, set map[string]bool) {
		if set["max-history"] {
			cfg.Limits.MaxHistory = *history
		}
		if set["cache"] {
			cfg.Cache.Responses = *on
		}
		if set["cache-mib"] {
			cfg.Cache.BudgetMiB = *mib
		}
		if set["state-dir"] {
			cfg.Cache.StateDir = *stateDir
		}
		if set["no-warm"] {
			cfg.Cache.NoWarm = *noWarm
		}
		if set["save-interval"] {
			cfg.Cache.SaveInterval = &duration{*every}
		}
		if set["warm-save-interval"] {
			cfg.Cache.WarmSaveInterval = &duration{*warmEvery}
		}
		if set["no-kv-reuse"] {
			cfg.Cache.NoKVReuse = *noKV
		}
	}
}

// chatModel names what the daemon answers devices with, for the saved
// conversations' file: a start with another backend or model refuses it
// (docs/caching.md), as the engine refuses its warm file.
func chatModel(cfg config) string {
	return fmt.Sprintf("%s|%s|%s", cfg.Backend, cfg.Model, cfg.Ollama.Model)
}
