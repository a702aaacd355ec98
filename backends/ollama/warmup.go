package ollama

import (
	"context"
	"sync"
	"time"

	"github.com/ollama/ollama/api"
)

// Warm-up (docs/caching.md): Ollama loads a model on its first request,
// seconds on a small board, and unloads it keep_alive after the last one
// (5 min by default) or when it restarts. The engine asks each endpoint to
// load the model — Ollama's documented load request, /api/generate with
// the model and no prompt, with the configured keep_alive — when it starts,
// when an endpoint comes back after being unreachable (a restarted
// Ollama), and when a probe finds the model gone from /api/ps while it
// should still be loaded (the last request is younger than keep_alive:
// Ollama restarted between two probes). A model that Ollama unloaded
// because keep_alive ran out stays unloaded; with keep_alive 0 (unload at
// once) there is no warm-up.

// defaultOllamaKeepAlive is Ollama's keep_alive when a request sets none.
const defaultOllamaKeepAlive = 5 * time.Minute

// warmState is an endpoint's warm-up bookkeeping.
type warmState struct {
	mu      sync.Mutex
	down    bool // the last probe could not reach it
	loaded  bool // the model was in /api/ps at the last probe
	loading bool // a load request is in flight
	lastUse time.Time
	loads   int64 // load requests that succeeded
}

// warmUpOff says whether the configuration asks Ollama to unload at once
// or turns warm-up off.
func (o *Engine) warmUpOff() bool {
	return o.cfg.NoWarmUp || (o.cfg.KeepAlive != nil && *o.cfg.KeepAlive == 0)
}

// keepAlive is how long Ollama keeps the model after a request.
func (o *Engine) keepAlive() time.Duration {
	if o.cfg.KeepAlive != nil {
		return *o.cfg.KeepAlive
	}
	return defaultOllamaKeepAlive
}

// used records a request to ep: the model stays loaded keep_alive from now.
func (ep *endpoint) used() {
	ep.warm.mu.Lock()
	ep.warm.lastUse = time.Now()
	ep.warm.mu.Unlock()
}

// probed updates ep's warm-up state after a probe (reached: the server
// answered; loaded: /api/ps lists the model) and reports why the model
// should be loaded now, "" when not.
func (o *Engine) probed(ep *endpoint, reached, loaded bool) string {
	w := &ep.warm
	w.mu.Lock()
	defer w.mu.Unlock()
	wasDown, wasLoaded := w.down, w.loaded
	w.down = !reached
	if !reached {
		return ""
	}
	w.loaded = loaded
	ka := o.keepAlive()
	switch {
	case loaded || w.loading || o.warmUpOff() || ep.presenceOf(o.cfg.Model) != PresencePresent:
		return ""
	case wasDown:
		return "endpoint back"
	case wasLoaded && (ka < 0 || time.Since(w.lastUse) < ka):
		return "model unloaded before its keep_alive"
	}
	return ""
}

// warmUp asks ep to load the model, once at a time per endpoint.
func (o *Engine) warmUp(ctx context.Context, ep *endpoint, why string) {
	w := &ep.warm
	w.mu.Lock()
	if w.loading {
		w.mu.Unlock()
		return
	}
	w.loading = true
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.loading = false
		w.mu.Unlock()
	}()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, o.cfg.FirstTokenTimeout)
	defer cancel()
	req := &api.GenerateRequest{Model: o.cfg.Model}
	if o.cfg.KeepAlive != nil {
		req.KeepAlive = &api.Duration{Duration: *o.cfg.KeepAlive}
	}
	err := ep.client.Generate(ctx, req, func(api.GenerateResponse) error { return nil })
	if err != nil {
		o.log.Warn("ollama: loading the model failed", "endpoint", ep.url, "model", o.cfg.Model, "why", why, "err", err)
		return
	}
	w.mu.Lock()
	w.loaded, w.lastUse = true, time.Now()
	w.loads++
	w.mu.Unlock()
	o.log.Info("ollama: model loaded", "endpoint", ep.url, "model", o.cfg.Model, "why", why,
		"ms", time.Since(start).Milliseconds())
}

// warmUpAll loads the model on every endpoint that has it, waiting at most
// wait; the rest finish in the background.
func (o *Engine) warmUpAll(wait time.Duration) {
	if o.warmUpOff() {
		return
	}
	var wg sync.WaitGroup
	for _, ep := range o.endpoints {
		if ep.presenceOf(o.cfg.Model) != PresencePresent {
			continue
		}
		wg.Add(1)
		o.bg.Add(1)
		go func() {
			defer o.bg.Done()
			defer wg.Done()
			o.warmUp(o.baseCtx, ep, "start")
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		o.log.Info("ollama: still loading the model; serving meanwhile", "model", o.cfg.Model)
	}
}

// WarmUps is the number of load requests that succeeded, per endpoint URL.
func (o *Engine) WarmUps() map[string]int64 {
	m := make(map[string]int64, len(o.endpoints))
	for _, ep := range o.endpoints {
		ep.warm.mu.Lock()
		m[ep.url] = ep.warm.loads
		ep.warm.mu.Unlock()
	}
	return m
}
