package ollama

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/ollama/ollama/api"
)

// probeLoop checks every endpoint in the background.
func (o *Engine) probeLoop() {
	defer close(o.done)
	t := time.NewTicker(max(min(o.cfg.ProbeInterval, o.cfg.BreakerCooldown/2), 10*time.Millisecond))
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-o.closing:
			return
		case now := <-t.C:
			// Open breakers are probed as soon as their cool-down allows;
			// the rest every ProbeInterval.
			full := now.Sub(last) >= o.cfg.ProbeInterval
			if full {
				last = now
			}
			for _, ep := range o.endpoints {
				st, _, _ := ep.breaker.snapshot()
				if full || st != BreakerClosed {
					o.probe(o.baseCtx, ep)
				}
			}
		}
	}
}

func (o *Engine) probeAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ep := range o.endpoints {
		wg.Go(func() { o.probe(ctx, ep) })
	}
	wg.Wait()
}

// probe asks one endpoint for the model (/api/show) and for what is loaded
// (/api/ps). It takes the breaker's trial when half-open; an open breaker
// still cooling down is left alone.
func (o *Engine) probe(ctx context.Context, ep *endpoint) {
	if !ep.breaker.allow(time.Now()) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.ConnectTimeout+5*time.Second)
	defer cancel()
	info, err := o.show(ctx, ep, o.cfg.Model)
	var oe *Error
	switch {
	case err == nil:
		ep.breaker.success()
		ep.mu.Lock()
		ep.info = info
		ep.mu.Unlock()
	case errors.As(err, &oe) && !oe.countsAgainst():
		ep.breaker.success() // it answered: the server works
	case ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled):
		ep.breaker.release() // we are closing
		return
	default:
		ep.breaker.failure(time.Now())
		o.probed(ep, false, false)
		return
	}
	if ps, err := ep.client.ListRunning(ctx); err == nil {
		var size, vram int64
		loaded := false
		for _, m := range ps.Models {
			if canonicalModel(m.Name) == canonicalModel(o.cfg.Model) || canonicalModel(m.Model) == canonicalModel(o.cfg.Model) {
				size, vram, loaded = m.Size, m.SizeVRAM, true
			}
		}
		if why := o.probed(ep, true, loaded); why != "" {
			o.bg.Add(1)
			go func() {
				defer o.bg.Done()
				o.warmUp(o.baseCtx, ep, why)
			}()
		}
		ep.mu.Lock()
		changed := (ep.sizeVRAM > 0) != (vram > 0)
		ep.size, ep.sizeVRAM = size, vram
		ep.mu.Unlock()
		if changed {
			o.healthChanged()
		}
	}
}

// show looks a model up on one endpoint and records its presence.
func (o *Engine) show(ctx context.Context, ep *endpoint, model string) (backends.ModelInfo, error) {
	resp, err := ep.client.Show(ctx, &api.ShowRequest{Model: model})
	if err != nil {
		oe := o.classify(ep, err, 0, false)
		if oe.Kind == FailModelMissing && ep.setPresence(model, PresenceMissing) {
			o.log.Warn("model not on this Ollama", "endpoint", ep.url, "model", model)
			o.healthChanged()
		}
		ep.mu.Lock()
		ep.lastError = oe.Error()
		ep.mu.Unlock()
		return backends.ModelInfo{}, oe
	}
	if ep.setPresence(model, PresencePresent) {
		o.healthChanged()
	}
	info := backends.ModelInfo{Name: model, Quantization: resp.Details.QuantizationLevel}
	for k, v := range resp.ModelInfo {
		f, ok := v.(float64) // JSON numbers
		switch {
		case !ok:
		case k == "general.parameter_count":
			info.Parameters = int64(f)
		case strings.HasSuffix(k, ".context_length"):
			info.ContextLength = int(f)
		}
	}
	return info, nil
}
