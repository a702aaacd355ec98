package daemon

import (
	"context"
	"time"

	"github.com/mcpd-project/mcpd/backends"
)

// Periodic saves (docs/caching.md §1d): the devices' conversations every
// SaveInterval, the engine's warm file every WarmSaveInterval. They have
// intervals of their own because they cost and give different things: the
// chat file is a few KiB a crash must not lose; the warm file is the
// engine's KV caches (12 MiB and more), written whole at every save — on
// an appliance's SD card or eMMC the writes that wear it — and a stale one
// still serves a resumed conversation's older turns (the engine reuses a
// sequence by its common token prefix with the prompt), so only the turns
// since its save are evaluated again after a crash.

// periodicSave is one of the saver's files: its interval in a
// configuration, how to save it, and when it was last saved.
type periodicSave struct {
	every func(*Config) time.Duration
	save  func(ctx context.Context)
	last  time.Time
}

// saver saves each file once its interval passed since its last save,
// while ctx lives. Each save writes only what changed (SaveChats compares
// the conversations' generation, the engine a fingerprint of its caches),
// so a crash loses at most an interval of each. A reload that changes an
// interval wakes it (Reconfigure): the new interval counts from the last
// save, and a file already due is saved at once.
func (d *Daemon) saver(ctx context.Context) {
	start := d.clock.Now()
	files := []*periodicSave{
		{every: func(c *Config) time.Duration { return c.SaveInterval }, save: func(context.Context) { d.SaveChats() }, last: start},
		{every: func(c *Config) time.Duration { return c.WarmSaveInterval }, save: d.saveWarm, last: start},
	}
	for {
		cfg, now := d.conf(), d.clock.Now()
		var wait time.Duration // 0: every file off
		for _, f := range files {
			every := f.every(cfg)
			if every <= 0 {
				continue
			}
			if !now.Before(f.last.Add(every)) {
				f.save(ctx)
				f.last = now
			}
			if left := f.last.Add(every).Sub(now); wait == 0 || left < wait {
				wait = left
			}
		}
		if wait == 0 {
			wait = time.Hour // nothing to save; a reload that turns one on wakes the saver
		}
		t := d.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-d.saveWake:
			t.Stop()
		}
	}
}

// saveWarm has the engine write its warm file if its caches changed since
// the file was written or read (backends.WarmSaver; other engines keep
// none).
func (d *Daemon) saveWarm(ctx context.Context) {
	w, ok := d.Backend().(backends.WarmSaver)
	if !ok {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.SaveWarm(sctx); err != nil && ctx.Err() == nil {
		d.log.Warn("periodic save: the warm cache was not saved", "err", err)
	}
}
