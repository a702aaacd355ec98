package ollama

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/ollama/ollama/api"
)

// one http.Client and Transport, so connections are kept alive and reused
// across requests and sessions.
type Engine struct {
	cfg       Config
	transport *http.Transport
	endpoints []*endpoint
	log       *slog.Logger

	baseCtx    context.Context // ends with Close: probes stop
	cancelBase context.CancelFunc
	closing    chan struct{}
	done       chan struct{}
	once       sync.Once
	bg         sync.WaitGroup // warm-ups in flight; Close waits for them
}

var (
	_ backends.Backend          = (*Engine)(nil)
	_ backends.DegradedReporter = (*Engine)(nil)
	_ backends.EndpointReporter = (*Engine)(nil)
	_ backends.Accelerated      = (*Engine)(nil)
	_ backends.Refresher        = (*Engine)(nil)
	_ backends.CapacityReporter = (*Engine)(nil)
)

// Starter returns the backends.Starter that opens an Ollama engine with
// cfg for backends.Open; the selector is told of every health change.
func Starter(cfg Config) backends.Starter {
	return func(ctx context.Context, env backends.StartEnv) (backends.Backend, error) {
		if cfg.Logger == nil {
			cfg.Logger = env.Logger
		}
		user := cfg.OnHealthChange
		cfg.OnHealthChange = func() {
			if env.HealthChanged != nil {
				env.HealthChanged()
			}
			if user != nil {
				user()
			}
		}
		e, err := New(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return e, nil
	}
}

// New connects to the configured endpoints and checks that the model
// is there. An endpoint that cannot be reached does not fail the start (an
// Ollama starting after mcpd is normal under systemd): its breaker opens
// and the background probe brings it in when it answers. A model that every
// reachable endpoint says it does not have is an error naming the model.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	cfg.defaults()
	if cfg.Model == "" {
		return nil, errors.New("ollama: no model configured")
	}
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               nil, // a local inference server: never through a proxy
		DialContext:         dialer.DialContext,
		MaxIdleConns:        cfg.MaxIdleConnsPerHost * len(cfg.Endpoints),
		MaxIdleConnsPerHost: cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // NDJSON lines must arrive as they are written
	}
	client := &http.Client{Transport: tr} // no Timeout: streams are bounded by the phase timers
	o := &Engine{cfg: cfg, transport: tr, log: cfg.Logger, closing: make(chan struct{}), done: make(chan struct{})}
	o.baseCtx, o.cancelBase = context.WithCancel(context.Background())
	for _, raw := range cfg.Endpoints {
		u, err := url.Parse(strings.TrimRight(raw, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("ollama: endpoint %q: want http://host:port", raw)
		}
		ep := &endpoint{url: u.String(), client: api.NewClient(u, client), presence: map[string]Presence{},
			parallel: cfg.Parallel}
		if n, ok := cfg.EndpointParallel[raw]; ok && n > 0 {
			ep.parallel = n
		} else if n, ok := cfg.EndpointParallel[ep.url]; ok && n > 0 {
			ep.parallel = n
		}
		ep.breaker = newBreaker(cfg.BreakerFailures, cfg.BreakerCooldown, func(from, to BreakerState) {
			o.log.Warn("ollama endpoint breaker", "endpoint", ep.url, "from", from.String(), "to", to.String())
			o.healthChanged()
		})
		o.endpoints = append(o.endpoints, ep)
	}
	o.probeAll(ctx)
	o.warmUpAll(cfg.WarmUpWait)
	go o.probeLoop()
	var reached, missing []string
	for _, ep := range o.endpoints {
		switch ep.presenceOf(cfg.Model) {
		case PresencePresent:
			reached = append(reached, ep.url)
		case PresenceMissing:
			missing = append(missing, ep.url)
		}
	}
	if len(reached) == 0 && len(missing) > 0 && len(missing) == len(o.endpoints) {
		o.Close()
		return nil, fmt.Errorf("%w: model %q is not on Ollama at %s (ollama pull %s)",
			backends.ErrModelNotFound, cfg.Model, strings.Join(missing, ", "), cfg.Model)
	}
	if len(reached) == 0 {
		o.log.Warn("no Ollama endpoint reachable yet; probing in the background",
			"endpoints", strings.Join(cfg.Endpoints, ","), "model", cfg.Model)
	} else {
		o.log.Info("ollama backend ready", "model", cfg.Model, "endpoints", strings.Join(reached, ","))
	}
	return o, nil
}

func (o *Engine) healthChanged() {
	if o.cfg.OnHealthChange != nil {
		go o.cfg.OnHealthChange()
	}
}

// Name implements Backend.
func (o *Engine) Name() string { return "ollama" }

// DefaultModel is the configured model name.
func (o *Engine) DefaultModel() string { return o.cfg.Model }

// Healthy implements Backend without touching the network: nil when some
// endpoint's breaker lets requests through and the model is not known to
// be missing there.
func (o *Engine) Healthy(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-o.closing:
		return backends.ErrClosed
	default:
	}
	now := time.Now()
	missing := 0
	for _, ep := range o.endpoints {
		p := ep.presenceOf(o.cfg.Model)
		if p == PresenceMissing {
			missing++
		}
		if p == PresencePresent && ep.breaker.ready(now) {
			return nil
		}
	}
	if missing == len(o.endpoints) {
		return fmt.Errorf("%w: model %q is not on any Ollama endpoint (ollama pull %s)", backends.ErrModelNotFound, o.cfg.Model, o.cfg.Model)
	}
	return fmt.Errorf("%w: no Ollama endpoint is reachable with model %q (breakers: %s)", backends.ErrUnavailable, o.cfg.Model, o.breakerSummary())
}

func (o *Engine) breakerSummary() string {
	parts := make([]string, len(o.endpoints))
	for i, ep := range o.endpoints {
		st, _, _ := ep.breaker.snapshot()
		parts[i] = ep.url + " " + st.String()
	}
	return strings.Join(parts, ", ")
}

// Model implements Backend from what the probes learnt: "" is the
// configured model. Another name is looked up with /api/show.
func (o *Engine) Model(ctx context.Context, name string) (backends.ModelInfo, error) {
	if err := o.Healthy(ctx); err != nil && !errors.Is(err, backends.ErrModelNotFound) {
		return backends.ModelInfo{}, err
	}
	if name == "" || canonicalModel(name) == canonicalModel(o.cfg.Model) {
		for _, ep := range o.endpoints {
			ep.mu.Lock()
			info, p := ep.info, ep.presence[canonicalModel(o.cfg.Model)]
			ep.mu.Unlock()
			if p == PresencePresent {
				return info, nil
			}
		}
		return backends.ModelInfo{}, fmt.Errorf("%w: %q", backends.ErrModelNotFound, o.cfg.Model)
	}
	var errs []error
	for _, ep := range o.endpoints {
		if !ep.breaker.ready(time.Now()) {
			continue
		}
		info, err := o.show(ctx, ep, name)
		if err == nil {
			return info, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return backends.ModelInfo{}, fmt.Errorf("%w: every Ollama endpoint's breaker is open", backends.ErrUnavailable)
	}
	return backends.ModelInfo{}, errs[0]
}

// Endpoints returns a snapshot of every endpoint, in configured order.
func (o *Engine) Endpoints() []backends.EndpointStatus {
	out := make([]backends.EndpointStatus, len(o.endpoints))
	for i, ep := range o.endpoints {
		st, failures, opened := ep.breaker.snapshot()
		ep.mu.Lock()
		out[i] = backends.EndpointStatus{URL: ep.url, Breaker: st.String(), Failures: failures, Opened: opened,
			InFlight: ep.inFlight.Load(), Parallel: ep.parallel, Requests: ep.requests.Load(), Model: o.cfg.Model,
			Presence: ep.presence[canonicalModel(o.cfg.Model)].String(),
			Size:     ep.size, SizeVRAM: ep.sizeVRAM, LastError: ep.lastError}
		ep.mu.Unlock()
	}
	return out
}

// ModelOnGPU reports whether some endpoint has the model loaded with part
// of it in GPU memory (/api/ps size_vram > 0).
func (o *Engine) ModelOnGPU() bool {
	for _, ep := range o.endpoints {
		ep.mu.Lock()
		v := ep.sizeVRAM
		ep.mu.Unlock()
		if v > 0 {
			return true
		}
	}
	return false
}

// Remote reports whether an endpoint is on another host: someone pointed
// mcpd at an Ollama elsewhere (a GPU box on the LAN) on purpose.
func (o *Engine) Remote() bool {
	for _, ep := range o.endpoints {
		u, err := url.Parse(ep.url)
		if err != nil {
			continue
		}
		h := u.Hostname()
		if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return true
		}
	}
	return false
}

// AccelerationHint implements backends.Accelerated: the model in GPU
// memory on an endpoint, or an endpoint on another host, is a reason to
// prefer Ollama over the in-process CPU engine.
func (o *Engine) AccelerationHint() string {
	switch {
	case o.ModelOnGPU():
		return "Ollama holds the model in GPU memory (/api/ps size_vram > 0)"
	case o.Remote():
		return "Ollama endpoint on another host"
	}
	return ""
}

// Capacity implements backends.CapacityReporter: the parallel slots of
// every endpoint, summed.
func (o *Engine) Capacity() int {
	n := 0
	for _, ep := range o.endpoints {
		n += ep.parallel
	}
	return n
}

// Degraded implements backends.DegradedReporter: some endpoint's breaker
// is not closed.
func (o *Engine) Degraded() bool {
	for _, ep := range o.endpoints {
		if st, _, _ := ep.breaker.snapshot(); st != BreakerClosed {
			return true
		}
	}
	return false
}

// Refresh implements backends.Refresher: every endpoint is probed now.
func (o *Engine) Refresh(ctx context.Context) { o.probeAll(ctx) }

// Close implements Backend.
func (o *Engine) Close() error {
	first := false
	o.once.Do(func() { first = true; close(o.closing); o.cancelBase() })
	if !first {
		return backends.ErrClosed
	}
	<-o.done
	o.bg.Wait()
	o.transport.CloseIdleConnections()
	return nil
}
