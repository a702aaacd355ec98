package main

import (
	"flag"
	"fmt"
)

// cacheSection is [cache] (docs/caching.md): what the engines keep of the
// work they did, so that a conversation's next turn and a repeated request
// do not pay for it again.
type cacheSection struct {
	// Responses answers deterministic requests (greedy or with a seed)
	// seen before from memory; off by default, on for --cache.
	Responses bool `toml:"responses"`
	// BudgetMiB bounds the response cache (default 64).
	BudgetMiB int `toml:"budget_mib"`
	// NoKVReuse makes the in-process engine evaluate every prompt whole
	// instead of reusing what a sequence holds (for comparisons).
	NoKVReuse bool `toml:"no_kv_reuse"`
}

const defaultCacheMiB = 64

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
	return nil
}

// cacheFlags defines the cache's flags; the function it returns applies
// those that were set.
func cacheFlags(fs *flag.FlagSet) func(cfg *config, set map[string]bool) {
	on := fs.Bool("cache", false, "answer deterministic requests (temperature 0 or a seed) seen before from memory")
	mib := fs.Int("cache-mib", 0, fmt.Sprintf("response cache budget in MiB (default %d)", defaultCacheMiB))
	noKV := fs.Bool("no-kv-reuse", false, "evaluate every prompt whole instead of reusing the engine's KV cache (for comparisons)")
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
		if set["no-kv-reuse"] {
			cfg.Cache.NoKVReuse = *noKV
		}
	}
}
