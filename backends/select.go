package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends/detect"
)

// Selector is the Backend the daemon sees: it routes each request to the
// engine chosen by the policy and health, and fails over to the next one
// when a request fails before any output. The choice is re-evaluated when
// health changes (a breaker opens or closes, a model appears, a GPU shows
// up), never per request or per token.
type Selector struct {
	cfg     OpenConfig
	log     *slog.Logger
	engines map[Policy]Backend

	current   atomic.Pointer[choice]
	failovers atomic.Int64
	wake      chan bool // true: probe the machine again first
	closing   chan struct{}
	done      chan struct{}
	once      sync.Once

	mu      sync.Mutex
	machine detect.Machine

	cache *ResponseCache // nil: none
}

// choice is one evaluation's outcome; Generate reads it without locks.
type choice struct {
	order    []Policy // the policy's preference
	engines  []Backend
	names    []Policy // engines in the order requests try them: the chosen one first
	chosen   Policy
	reason   string
	since    time.Time
	degraded bool
}

var (
	_ Backend           = (*Selector)(nil)
	_ DegradedReporter  = (*Selector)(nil)
	_ EndpointReporter  = (*Selector)(nil)
	_ SelectionReporter = (*Selector)(nil)
	_ CapacityReporter  = (*Selector)(nil)
)

// SelectionStatus is a snapshot of the selection for /status, metrics and
// logs.
type SelectionStatus struct {
	Policy    Policy
	Chosen    string   // the engine requests go to first: "ollama" or "llama.cpp"
	Reason    string   // why, in words
	Order     []string // the engines requests try, in order
	Since     time.Time
	Degraded  bool  // running on a fallback, or an Ollama endpoint is down
	Failovers int64 // requests that moved to another engine before their first token
	Machine   detect.Machine
	Engines   []EngineStatus
	Endpoints []EndpointStatus // of engines that report them (Ollama)
}

// EngineStatus is one engine's health.
type EngineStatus struct {
	Name    string
	Healthy bool
	Error   string
}

func (s *Selector) poke(reprobe bool) {
	select {
	case s.wake <- reprobe:
	default:
		if reprobe { // make sure a pending wake-up re-probes too
			select {
			case <-s.wake:
			default:
			}
			select {
			case s.wake <- true:
			default:
			}
		}
	}
}

func (s *Selector) loop() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.DetectInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-s.closing; cancel() }()
	for {
		reprobe, why := false, ""
		select {
		case <-s.closing:
			return
		case <-t.C:
			reprobe, why = true, "periodic probe"
		case reprobe = <-s.wake:
			why = "health change"
		}
		if reprobe {
			m := s.cfg.Detector.Probe(ctx)
			s.mu.Lock()
			changed := !m.SameHardware(s.machine)
			s.machine = m
			s.mu.Unlock()
			if changed {
				s.log.Info("machine changed", "summary", m.Summary())
				why = "hardware change"
			}
		}
		s.evaluate(ctx, why)
	}
}

// preference orders the engines for the policy and says why.
func (s *Selector) preference() ([]Policy, string) {
	s.mu.Lock()
	m := s.machine
	s.mu.Unlock()
	var order []Policy
	var reason string
	switch s.cfg.Policy {
	case PolicyAuto:
		gpu := ""
		switch {
		case m.HasGPU():
			gpu = "GPU found (" + m.Summary() + ")"
		default:
			if a, ok := s.engines[PolicyOllama].(Accelerated); ok {
				gpu = a.AccelerationHint()
			}
		}
		if gpu != "" {
			order, reason = []Policy{PolicyOllama, PolicyNative}, "auto: "+gpu
		} else {
			order, reason = []Policy{PolicyNative, PolicyOllama}, "auto: CPU only ("+m.Summary()+")"
		}
	default:
		order = append([]Policy{s.cfg.Policy}, s.cfg.Fallback...)
		reason = "policy " + string(s.cfg.Policy)
	}
	out := order[:0:0]
	for _, p := range order {
		if _, ok := s.engines[p]; ok && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, reason
}

// evaluate picks the first healthy engine in preference order and
// publishes the choice; a change is logged with its reason.
func (s *Selector) evaluate(ctx context.Context, why string) {
	order, reason := s.preference()
	chosen := Policy("")
	var skipped []string
	old := s.current.Load()
	for _, p := range order {
		if r, ok := s.engines[p].(Refresher); ok && old != nil && old.chosen != p && s.engines[p].Healthy(ctx) == nil {
			// About to move requests to this engine: ask it for the
			// model now rather than trust its last probe.
			r.Refresh(ctx)
		}
		if err := s.engines[p].Healthy(ctx); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s unhealthy: %v", p, err))
			continue
		}
		chosen = p
		break
	}
	if len(skipped) > 0 {
		reason += "; " + strings.Join(skipped, "; ")
	}
	if chosen == "" {
		chosen = order[0]
		reason += "; no engine healthy, trying " + string(chosen) + " first"
	}
	names := []Policy{chosen}
	for _, p := range order {
		if p != chosen {
			names = append(names, p)
		}
	}
	c := &choice{order: order, names: names, chosen: chosen, reason: reason, since: time.Now()}
	for _, p := range names {
		c.engines = append(c.engines, s.engines[p])
	}
	c.degraded = chosen != order[0]
	for _, e := range c.engines {
		if d, ok := e.(DegradedReporter); ok && d.Degraded() {
			c.degraded = true
		}
	}
	if old != nil && old.chosen == chosen && slices.Equal(old.names, names) && old.reason == reason && old.degraded == c.degraded {
		return
	}
	same := old != nil && old.chosen == chosen && slices.Equal(old.names, names) && old.degraded == c.degraded
	if old != nil && old.chosen == chosen && slices.Equal(old.names, names) {
		c.since = old.since
	}
	s.current.Store(c)
	if same {
		// Only the wording moved (the free memory in the machine's
		// summary, an unhealthy engine's error text): /status shows the
		// new reason; the log says only what changes the serving.
		s.log.Debug("backend selection unchanged", "engine", s.engines[chosen].Name(), "reason", reason, "trigger", why)
		return
	}
	s.log.Info("backend selected", "engine", s.engines[chosen].Name(), "order", fmt.Sprint(names),
		"reason", reason, "trigger", why, "degraded", c.degraded)
}

// Status returns a snapshot of the selection.
func (s *Selector) Status() SelectionStatus {
	c := s.current.Load()
	s.mu.Lock()
	m := s.machine
	s.mu.Unlock()
	st := SelectionStatus{Policy: s.cfg.Policy, Chosen: s.engines[c.chosen].Name(), Reason: c.reason,
		Since: c.since, Degraded: c.degraded, Failovers: s.failovers.Load(), Machine: m}
	ctx := context.Background()
	for _, p := range c.names {
		e := s.engines[p]
		st.Order = append(st.Order, e.Name())
		es := EngineStatus{Name: e.Name(), Healthy: true}
		if err := e.Healthy(ctx); err != nil {
			es.Healthy, es.Error = false, err.Error()
		}
		st.Engines = append(st.Engines, es)
	}
	for _, p := range c.names {
		if r, ok := s.engines[p].(EndpointReporter); ok {
			st.Endpoints = append(st.Endpoints, r.Endpoints()...)
		}
	}
	return st
}

// Name implements Backend: the engine requests go to now.
func (s *Selector) Name() string { return s.engines[s.current.Load().chosen].Name() }

// Degraded reports that requests run on a fallback engine or that an Ollama
// endpoint's breaker is not closed (STATUS shows DEGRADED).
func (s *Selector) Degraded() bool { return s.current.Load().degraded }

// Endpoints implements EndpointReporter with the endpoints of every
// engine that has them, in the order requests try the engines.
func (s *Selector) Endpoints() []EndpointStatus { return s.Status().Endpoints }

// Capacity implements CapacityReporter: the largest capacity among the
// engines (0 when none reports one). It does not follow the current
// choice: a request that lands on a smaller engine waits in that engine's
// own queue, which is cheaper than admitting fewer requests everywhere.
func (s *Selector) Capacity() int {
	n := 0
	for _, e := range s.engines {
		if c, ok := e.(CapacityReporter); ok {
			n = max(n, c.Capacity())
		}
	}
	return n
}

// Engine returns a running engine ("native" or "ollama"), or nil.
func (s *Selector) Engine(p Policy) Backend { return s.engines[p] }

// Healthy implements Backend: nil when some engine can take requests.
func (s *Selector) Healthy(ctx context.Context) error {
	var first error
	for _, e := range s.current.Load().engines {
		err := e.Healthy(ctx)
		if err == nil {
			return nil
		}
		first = cmpErr(first, err)
	}
	return first
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Model implements Backend with the chosen engine.
func (s *Selector) Model(ctx context.Context, name string) (ModelInfo, error) {
	return s.current.Load().engines[0].Model(ctx, name)
}

// failoverable: errors after which the next engine may take the request,
// provided no output reached the caller.
func failoverable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrBusy) || errors.Is(err, ErrFailed) ||
		errors.Is(err, ErrModelNotFound) || errors.Is(err, ErrClosed) || errors.Is(err, ErrNoMemory)
}

// Generate implements Backend: a deterministic request answered before
// comes from the response cache, if there is one; otherwise the chosen
// engine first, and while no output has reached emit, a failure moves the
// request to the next engine, so the device never sees it.
func (s *Selector) Generate(ctx context.Context, req Request, emit Emit) (Result, error) {
	if s.cache == nil {
		res, _, err := s.generate(ctx, req, emit)
		return res, err
	}
	if !Deterministic(req.Options) || len(req.Tools) > 0 { // a tool's result is the device's, not the model's
		s.cache.skipped()
		res, _, err := s.generate(ctx, req, emit)
		return res, err
	}
	start := time.Now()
	engine := s.current.Load().engines[0]
	info, err := engine.Model(ctx, req.Model)
	if err != nil { // the engine says why
		res, _, err := s.generate(ctx, req, emit)
		return res, err
	}
	k := key(engine.Name(), info.Name, req)
	if text, res, ok := s.cache.get(k); ok {
		if len(text) > 0 {
			if err := emit(text); err != nil {
				return Result{}, err
			}
		}
		res.TTFT = time.Since(start)
		res.Duration, res.PromptCached = res.TTFT, res.PromptTokens
		return res, nil
	}
	var text []byte
	res, served, err := s.generate(ctx, req, func(p []byte) error {
		text = append(text, p...)
		return emit(p)
	})
	if err == nil && served == engine { // not an answer of a fallback's model
		s.cache.put(k, text, res)
	}
	return res, err
}

// CacheStats implements CacheReporter: the response cache's counters
// (zero, Budget 0, without one) and the engines' KV cache reuse, summed.
func (s *Selector) CacheStats() CacheStats {
	var st CacheStats
	if s.cache != nil {
		st = s.cache.Stats()
	}
	for _, e := range s.engines {
		if r, ok := e.(KVReporter); ok {
			st.KV.add(r.KVStats())
		}
	}
	return st
}

// generate runs req on the engines in order; it returns the one that
// answered.
func (s *Selector) generate(ctx context.Context, req Request, emit Emit) (Result, Backend, error) {
	c := s.current.Load()
	var errs []error
	for i, e := range c.engines {
		if err := e.Healthy(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		started := false
		res, err := e.Generate(ctx, req, func(p []byte) error {
			started = true
			return emit(p)
		})
		if err == nil || started || ctx.Err() != nil || !failoverable(err) {
			return res, e, err
		}
		errs = append(errs, err)
		if i+1 < len(c.engines) {
			s.failovers.Add(1)
			s.log.Warn("failing over before the first token", "from", e.Name(), "to", c.engines[i+1].Name(), "err", err)
		}
		s.poke(true) // a failure: look at the machine and the engines again
	}
	if ctx.Err() != nil {
		return Result{}, nil, ctx.Err()
	}
	// The most useful error: a missing model only when nothing else went
	// wrong (the other engine may simply name models differently).
	for _, err := range errs {
		if !errors.Is(err, ErrModelNotFound) {
			return Result{}, nil, err
		}
	}
	if len(errs) > 0 {
		return Result{}, nil, errs[0]
	}
	return Result{}, nil, fmt.Errorf("%w: no engine", ErrUnavailable)
}

// SaveWarm implements WarmSaver for the engines that save their caches.
func (s *Selector) SaveWarm(ctx context.Context) error {
	var errs []error
	for _, e := range s.engines {
		if w, ok := e.(WarmSaver); ok {
			if err := w.SaveWarm(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Close implements Backend: it stops re-evaluation and closes every engine.
func (s *Selector) Close() error {
	first := false
	s.once.Do(func() { first = true; close(s.closing) })
	if !first {
		return ErrClosed
	}
	<-s.done
	var errs []error
	for _, e := range s.engines {
		if err := e.Close(); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
