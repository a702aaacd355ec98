package backends

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ollama/ollama/api"
)

// OllamaConfig configures the Ollama backend.
type OllamaConfig struct {
	// Endpoints are Ollama base URLs, tried by health and load (default
	// http://127.0.0.1:11434).
	Endpoints []string
	// Model is the model requests with no name use, e.g. "llama3.2:1b".
	Model string
	// KeepAlive is how long Ollama keeps the model loaded after a request:
	// nil leaves Ollama's default (5 min), negative keeps it forever, 0
	// unloads at once.
	KeepAlive *time.Duration
	// Phase timeouts. ConnectTimeout bounds each TCP connect (default 3s);
	// FirstTokenTimeout the wait for the first streamed line, which
	// includes loading the model (default 2m); TokenTimeout the gap between
	// two lines (default 30s); TotalTimeout a whole Generate (default none:
	// the caller's context decides).
	ConnectTimeout    time.Duration
	FirstTokenTimeout time.Duration
	TokenTimeout      time.Duration
	TotalTimeout      time.Duration
	// Retries is how many more attempts a request gets while none of its
	// output has reached the caller (default 2; negative: none).
	Retries int
	// RetryBackoff is the first retry's delay, doubled per retry with full
	// jitter, at most 2s (default 100ms).
	RetryBackoff time.Duration
	// BreakerFailures consecutive failures open an endpoint's breaker
	// (default 3); BreakerCooldown later one trial may close it again
	// (default 10s).
	BreakerFailures int
	BreakerCooldown time.Duration
	// ProbeInterval is how often endpoints are checked in the background:
	// reachability, the model's presence, what /api/ps says is loaded
	// (default 15s).
	ProbeInterval time.Duration
	// MaxIdleConnsPerHost bounds the kept-alive connections per endpoint
	// (default 8).
	MaxIdleConnsPerHost int
	// OnHealthChange is called (on its own goroutine) when an endpoint's
	// breaker changes state or a model appears or disappears.
	OnHealthChange func()
	Logger         *slog.Logger
}

func (c *OllamaConfig) defaults() {
	if len(c.Endpoints) == 0 {
		c.Endpoints = []string{"http://127.0.0.1:11434"}
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 3 * time.Second
	}
	if c.FirstTokenTimeout <= 0 {
		c.FirstTokenTimeout = 2 * time.Minute
	}
	if c.TokenTimeout <= 0 {
		c.TokenTimeout = 30 * time.Second
	}
	if c.Retries == 0 {
		c.Retries = 2
	}
	c.Retries = max(c.Retries, 0)
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 100 * time.Millisecond
	}
	if c.BreakerFailures <= 0 {
		c.BreakerFailures = 3
	}
	if c.BreakerCooldown <= 0 {
		c.BreakerCooldown = 10 * time.Second
	}
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = 15 * time.Second
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = 8
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// FailureKind classifies what went wrong with one attempt at an endpoint.
type FailureKind string

const (
	FailRefused      FailureKind = "refused"         // nothing listens, or the host is unreachable
	FailConnect      FailureKind = "connect-timeout" // the TCP connect took too long
	FailFirstToken   FailureKind = "first-token-timeout"
	FailStall        FailureKind = "stall"           // too long between two streamed lines
	FailCut          FailureKind = "cut"             // the stream ended without the final done object
	FailConnLost     FailureKind = "connection-lost" // closed or reset before any response (Ollama restarting)
	FailModelMissing FailureKind = "model-missing"
	FailQueueFull    FailureKind = "queue-full" // 503: past OLLAMA_MAX_QUEUE
	FailServer       FailureKind = "server-error"
	FailRequest      FailureKind = "bad-request" // 4xx other than 404: our request is wrong
)

// OllamaError is one failed attempt at an endpoint. It unwraps to the
// backends error it maps to (ErrUnavailable, ErrBusy, ErrFailed,
// ErrModelNotFound) and to the underlying cause.
type OllamaError struct {
	Endpoint string
	Kind     FailureKind
	Status   int // HTTP status, when there was one
	Pieces   int // output pieces that reached the caller before it failed
	Err      error
}

func (e *OllamaError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ollama %s: %s", e.Endpoint, e.Kind)
	if e.Pieces > 0 {
		fmt.Fprintf(&b, " after %d pieces", e.Pieces)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *OllamaError) Unwrap() []error { return []error{e.sentinel(), e.Err} }

func (e *OllamaError) sentinel() error {
	switch e.Kind {
	case FailModelMissing:
		return ErrModelNotFound
	case FailQueueFull:
		return ErrBusy
	case FailRefused, FailConnect, FailConnLost:
		return ErrUnavailable
	case FailFirstToken:
		return ErrUnavailable
	}
	return ErrFailed
}

// retryable: may the request go again (here or elsewhere) when no output
// reached the caller?
func (e *OllamaError) retryable() bool { return e.Kind != FailRequest }

// countsAgainst: does this failure say the endpoint is unhealthy? A
// missing model, a full queue or a bad request come from a server that
// works.
func (e *OllamaError) countsAgainst() bool {
	switch e.Kind {
	case FailModelMissing, FailQueueFull, FailRequest:
		return false
	}
	return true
}

// Presence of a model on an endpoint, as last seen.
type Presence uint8

const (
	PresenceUnknown Presence = iota
	PresencePresent
	PresenceMissing
)

func (p Presence) String() string {
	return [...]string{"unknown", "present", "missing"}[p]
}

// EndpointStatus is a snapshot of one endpoint.
type EndpointStatus struct {
	URL       string
	Breaker   string // closed, open, half-open
	Failures  int    // consecutive failures while closed
	Opened    int64  // how many times the breaker opened
	InFlight  int64
	Requests  int64 // attempts sent
	Model     string
	Presence  string // of Model: unknown, present, missing
	Size      int64  // of Model when loaded (/api/ps), bytes
	SizeVRAM  int64  // of it in GPU memory: equal to Size = all on GPU, 0 = CPU
	LastError string
}

type endpoint struct {
	url      string
	client   *api.Client
	breaker  *breaker
	inFlight atomic.Int64
	requests atomic.Int64

	mu        sync.Mutex
	presence  map[string]Presence // canonical model name → last seen
	info      ModelInfo           // of the default model, from /api/show
	size      int64
	sizeVRAM  int64
	lastError string
}

func (ep *endpoint) setPresence(model string, p Presence) (changed bool) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	k := canonicalModel(model)
	changed = ep.presence[k] != p
	ep.presence[k] = p
	return changed
}

func (ep *endpoint) presenceOf(model string) Presence {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.presence[canonicalModel(model)]
}

// canonicalModel adds Ollama's default tag: "m" and "m:latest" are one.
func canonicalModel(name string) string {
	if name != "" && !strings.Contains(name, ":") {
		return name + ":latest"
	}
	return name
}

// Ollama is the backend for one or more Ollama servers. All endpoints share
// one http.Client and Transport, so connections are kept alive and reused
// across requests and sessions.
type Ollama struct {
	cfg       OllamaConfig
	transport *http.Transport
	endpoints []*endpoint
	log       *slog.Logger

	baseCtx    context.Context // ends with Close: probes stop
	cancelBase context.CancelFunc
	closing    chan struct{}
	done       chan struct{}
	once       sync.Once
}

var _ Backend = (*Ollama)(nil)

// NewOllama connects to the configured endpoints and checks that the model
// is there. An endpoint that cannot be reached does not fail the start (an
// Ollama starting after mcpd is normal under systemd): its breaker opens
// and the background probe brings it in when it answers. A model that every
// reachable endpoint says it does not have is an error naming the model.
func NewOllama(ctx context.Context, cfg OllamaConfig) (*Ollama, error) {
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
	o := &Ollama{cfg: cfg, transport: tr, log: cfg.Logger, closing: make(chan struct{}), done: make(chan struct{})}
	o.baseCtx, o.cancelBase = context.WithCancel(context.Background())
	for _, raw := range cfg.Endpoints {
		u, err := url.Parse(strings.TrimRight(raw, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("ollama: endpoint %q: want http://host:port", raw)
		}
		ep := &endpoint{url: u.String(), client: api.NewClient(u, client), presence: map[string]Presence{}}
		ep.breaker = newBreaker(cfg.BreakerFailures, cfg.BreakerCooldown, func(from, to BreakerState) {
			o.log.Warn("ollama endpoint breaker", "endpoint", ep.url, "from", from.String(), "to", to.String())
			o.healthChanged()
		})
		o.endpoints = append(o.endpoints, ep)
	}
	o.probeAll(ctx)
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
			ErrModelNotFound, cfg.Model, strings.Join(missing, ", "), cfg.Model)
	}
	if len(reached) == 0 {
		o.log.Warn("no Ollama endpoint reachable yet; probing in the background",
			"endpoints", strings.Join(cfg.Endpoints, ","), "model", cfg.Model)
	} else {
		o.log.Info("ollama backend ready", "model", cfg.Model, "endpoints", strings.Join(reached, ","))
	}
	return o, nil
}

func (o *Ollama) healthChanged() {
	if o.cfg.OnHealthChange != nil {
		go o.cfg.OnHealthChange()
	}
}

// Name implements Backend.
func (o *Ollama) Name() string { return "ollama" }

// DefaultModel is the configured model name.
func (o *Ollama) DefaultModel() string { return o.cfg.Model }

// Healthy implements Backend without touching the network: nil when some
// endpoint's breaker lets requests through and the model is not known to
// be missing there.
func (o *Ollama) Healthy(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-o.closing:
		return ErrClosed
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
		return fmt.Errorf("%w: model %q is not on any Ollama endpoint (ollama pull %s)", ErrModelNotFound, o.cfg.Model, o.cfg.Model)
	}
	return fmt.Errorf("%w: no Ollama endpoint is reachable with model %q (breakers: %s)", ErrUnavailable, o.cfg.Model, o.breakerSummary())
}

func (o *Ollama) breakerSummary() string {
	parts := make([]string, len(o.endpoints))
	for i, ep := range o.endpoints {
		st, _, _ := ep.breaker.snapshot()
		parts[i] = ep.url + " " + st.String()
	}
	return strings.Join(parts, ", ")
}

// Model implements Backend from what the probes learnt: "" is the
// configured model. Another name is looked up with /api/show.
func (o *Ollama) Model(ctx context.Context, name string) (ModelInfo, error) {
	if err := o.Healthy(ctx); err != nil && !errors.Is(err, ErrModelNotFound) {
		return ModelInfo{}, err
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
		return ModelInfo{}, fmt.Errorf("%w: %q", ErrModelNotFound, o.cfg.Model)
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
		return ModelInfo{}, fmt.Errorf("%w: every Ollama endpoint's breaker is open", ErrUnavailable)
	}
	return ModelInfo{}, errs[0]
}

// Endpoints returns a snapshot of every endpoint, in configured order.
func (o *Ollama) Endpoints() []EndpointStatus {
	out := make([]EndpointStatus, len(o.endpoints))
	for i, ep := range o.endpoints {
		st, failures, opened := ep.breaker.snapshot()
		ep.mu.Lock()
		out[i] = EndpointStatus{URL: ep.url, Breaker: st.String(), Failures: failures, Opened: opened,
			InFlight: ep.inFlight.Load(), Requests: ep.requests.Load(), Model: o.cfg.Model,
			Presence: ep.presence[canonicalModel(o.cfg.Model)].String(),
			Size:     ep.size, SizeVRAM: ep.sizeVRAM, LastError: ep.lastError}
		ep.mu.Unlock()
	}
	return out
}

// ModelOnGPU reports whether some endpoint has the model loaded with part
// of it in GPU memory (/api/ps size_vram > 0).
func (o *Ollama) ModelOnGPU() bool {
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
func (o *Ollama) Remote() bool {
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

// Close implements Backend.
func (o *Ollama) Close() error {
	first := false
	o.once.Do(func() { first = true; close(o.closing); o.cancelBase() })
	if !first {
		return ErrClosed
	}
	<-o.done
	o.transport.CloseIdleConnections()
	return nil
}

// probeLoop checks every endpoint in the background.
func (o *Ollama) probeLoop() {
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

func (o *Ollama) probeAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ep := range o.endpoints {
		wg.Go(func() { o.probe(ctx, ep) })
	}
	wg.Wait()
}

// probe asks one endpoint for the model (/api/show) and for what is loaded
// (/api/ps). It takes the breaker's trial when half-open; an open breaker
// still cooling down is left alone.
func (o *Ollama) probe(ctx context.Context, ep *endpoint) {
	if !ep.breaker.allow(time.Now()) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.ConnectTimeout+5*time.Second)
	defer cancel()
	info, err := o.show(ctx, ep, o.cfg.Model)
	var oe *OllamaError
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
		return
	}
	if ps, err := ep.client.ListRunning(ctx); err == nil {
		var size, vram int64
		for _, m := range ps.Models {
			if canonicalModel(m.Name) == canonicalModel(o.cfg.Model) || canonicalModel(m.Model) == canonicalModel(o.cfg.Model) {
				size, vram = m.Size, m.SizeVRAM
			}
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
func (o *Ollama) show(ctx context.Context, ep *endpoint, model string) (ModelInfo, error) {
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
		return ModelInfo{}, oe
	}
	if ep.setPresence(model, PresencePresent) {
		o.healthChanged()
	}
	info := ModelInfo{Name: model, Quantization: resp.Details.QuantizationLevel}
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

// errStalled and errNoFirstToken are the causes the phase timers cancel an
// attempt with.
var (
	errNoFirstToken = errors.New("no first token in time")
	errStalled      = errors.New("no token in time")
)

// emitError marks an error returned by the caller's emit: it ends the
// request as it is, with no retry and no blame on the endpoint.
type emitError struct{ err error }

func (e emitError) Error() string { return e.err.Error() }
func (e emitError) Unwrap() error { return e.err }

// Generate implements Backend: a streaming /api/chat on the endpoint with
// the fewest requests in flight among the healthy ones. While no output has
// reached emit, failures are retried with backoff (on another endpoint
// when there is one); after that, a failure ends the request with an error
// that unwraps to ErrFailed — never a success with made-up statistics.
func (o *Ollama) Generate(ctx context.Context, req Request, emit Emit) (Result, error) {
	start := time.Now()
	select {
	case <-o.closing:
		return Result{}, ErrClosed
	default:
	}
	if len(req.Messages) == 0 {
		return Result{}, fmt.Errorf("%w: no messages", ErrFailed)
	}
	if o.cfg.TotalTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.cfg.TotalTimeout)
		defer cancel()
	}
	model := req.Model
	if model == "" {
		model = o.cfg.Model
	}
	chat := o.chatRequest(model, req)
	var (
		res     Result
		lastErr error
		tried   = make(map[*endpoint]int, len(o.endpoints))
	)
	for attempt := 0; ; attempt++ {
		ep, err := o.pick(model, tried)
		if err != nil {
			if lastErr != nil {
				return res, lastErr
			}
			return res, err
		}
		tried[ep]++
		err = o.attempt(ctx, ep, chat, start, &res, emit)
		if err == nil {
			return res, nil
		}
		lastErr = err
		var oe *OllamaError
		if !errors.As(err, &oe) || res.TTFT > 0 || !oe.retryable() || ctx.Err() != nil {
			return res, err
		}
		if oe.Kind == FailModelMissing {
			// Not a retry: another endpoint may have the model.
			if attempt--; len(tried) == len(o.endpoints) {
				return res, err
			}
			continue
		}
		if attempt >= o.cfg.Retries {
			return res, err
		}
		if err := sleepCtx(ctx, o.backoff(attempt)); err != nil {
			return res, lastErr
		}
		o.log.Info("retrying on Ollama", "model", model, "attempt", attempt+2, "after", err)
	}
}

// backoff is full jitter over an exponential: uniform in [0, base·2ⁿ],
// at most 2s, so retries from many devices do not arrive in step.
func (o *Ollama) backoff(attempt int) time.Duration {
	ceil := min(o.cfg.RetryBackoff<<min(attempt, 10), 2*time.Second)
	return time.Duration(rand.Int64N(int64(ceil)) + 1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pick chooses the endpoint for the next attempt: breaker closed before
// half-open, then one not tried yet for this request, then the fewest
// requests in flight, then configured order. The model must not be known
// missing there.
func (o *Ollama) pick(model string, tried map[*endpoint]int) (*endpoint, error) {
	now := time.Now()
	type cand struct {
		ep    *endpoint
		rank  int
		tries int
		load  int64
	}
	cands := make([]cand, 0, len(o.endpoints))
	missing := 0
	for _, ep := range o.endpoints {
		if ep.presenceOf(model) == PresenceMissing {
			missing++
			continue
		}
		if !ep.breaker.ready(now) {
			continue
		}
		st, _, _ := ep.breaker.snapshot()
		rank := 0
		if st != BreakerClosed {
			rank = 1
		}
		cands = append(cands, cand{ep, rank, tried[ep], ep.inFlight.Load()})
	}
	// A handful of endpoints: insertion order plus a stable selection.
	for len(cands) > 0 {
		best := 0
		for i, c := range cands[1:] {
			b := cands[best]
			if c.rank < b.rank || c.rank == b.rank && (c.tries < b.tries || c.tries == b.tries && c.load < b.load) {
				best = i + 1
			}
		}
		if cands[best].ep.breaker.allow(now) {
			return cands[best].ep, nil
		}
		cands = append(cands[:best], cands[best+1:]...)
	}
	if missing == len(o.endpoints) {
		return nil, fmt.Errorf("%w: model %q is not on any Ollama endpoint (ollama pull %s)", ErrModelNotFound, model, model)
	}
	return nil, fmt.Errorf("%w: no Ollama endpoint available (breakers open)", ErrUnavailable)
}

func (o *Ollama) chatRequest(model string, req Request) *api.ChatRequest {
	msgs := make([]api.Message, len(req.Messages))
	for i, m := range req.Messages {
		msgs[i] = api.Message{Role: string(m.Role), Content: m.Content}
	}
	opts := map[string]any{}
	op := req.Options
	if op.MaxTokens > 0 {
		opts["num_predict"] = op.MaxTokens
	}
	if op.TemperatureSet {
		opts["temperature"] = op.Temperature
	}
	if op.SeedSet {
		opts["seed"] = int(op.Seed)
	}
	if op.TopK > 0 {
		opts["top_k"] = op.TopK
	}
	if op.TopP > 0 {
		opts["top_p"] = op.TopP
	}
	if op.MinP > 0 {
		opts["min_p"] = op.MinP
	}
	if op.RepeatPenalty > 0 {
		opts["repeat_penalty"] = op.RepeatPenalty
	}
	if len(op.Stop) > 0 {
		opts["stop"] = op.Stop
	}
	if op.ContextSize > 0 {
		opts["num_ctx"] = op.ContextSize
	}
	stream := true
	cr := &api.ChatRequest{Model: model, Messages: msgs, Stream: &stream, Options: opts}
	if o.cfg.KeepAlive != nil {
		cr.KeepAlive = &api.Duration{Duration: *o.cfg.KeepAlive}
	}
	return cr
}

// attempt runs one streaming chat on ep. The phase timers cancel the
// attempt's context with a cause that says which phase ran out.
func (o *Ollama) attempt(ctx context.Context, ep *endpoint, chat *api.ChatRequest, start time.Time, res *Result, emit Emit) error {
	ep.inFlight.Add(1)
	ep.requests.Add(1)
	defer ep.inFlight.Add(-1)
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// One timer for both phases. It first bounds the wait for the first
	// line; from then on it fires at most once per TokenTimeout and checks
	// the time of the latest line, re-arming itself for the rest of the
	// gap. Lines only store a timestamp: resetting a timer per token costs
	// more than the rest of our per-token work (BenchmarkOllamaOverhead).
	var lastLine atomic.Int64 // UnixNano of the latest line; 0: none yet
	var watchdog atomic.Pointer[time.Timer]
	watchdog.Store(time.AfterFunc(o.cfg.FirstTokenTimeout, func() {
		last := lastLine.Load()
		if last == 0 {
			cancel(errNoFirstToken)
			return
		}
		idle := time.Since(time.Unix(0, last))
		if idle >= o.cfg.TokenTimeout {
			cancel(errStalled)
			return
		}
		watchdog.Load().Reset(o.cfg.TokenTimeout - idle)
	}))
	defer func() { watchdog.Load().Stop() }()
	lines, pieces := 0, 0
	done := false
	err := ep.client.Chat(actx, chat, func(r api.ChatResponse) error {
		now := time.Now()
		lastLine.Store(now.UnixNano())
		if lines == 0 {
			watchdog.Load().Reset(o.cfg.TokenTimeout) // the gap phase starts
		}
		lines++
		if c := r.Message.Content; c != "" {
			if res.TTFT == 0 {
				res.TTFT = max(now.Sub(start), 1) // non-zero: output reached the caller
			}
			res.Duration = now.Sub(start)
			pieces++
			if err := emit([]byte(c)); err != nil {
				return emitError{err}
			}
		}
		if r.Done {
			done = true
			res.Tokens, res.PromptTokens = r.EvalCount, r.PromptEvalCount
			res.Stop = StopEOS
			if r.DoneReason == "length" {
				res.Stop = StopLength
			}
			if res.Duration == 0 {
				res.Duration = time.Since(start)
			}
		}
		return nil
	})
	var ee emitError
	switch {
	case errors.As(err, &ee):
		o.settle(ep, nil, true)
		return ee.err
	case err == nil && done:
		o.settle(ep, nil, false)
		if ep.setPresence(chat.Model, PresencePresent) {
			o.healthChanged()
		}
		return nil
	case ctx.Err() != nil: // the caller gave up: not the endpoint's fault
		ep.breaker.release()
		return ctx.Err()
	}
	cause := context.Cause(actx)
	var oe *OllamaError
	switch {
	case errors.Is(cause, errNoFirstToken):
		oe = &OllamaError{Endpoint: ep.url, Kind: FailFirstToken, Err: fmt.Errorf("nothing within %v", o.cfg.FirstTokenTimeout)}
	case errors.Is(cause, errStalled):
		oe = &OllamaError{Endpoint: ep.url, Kind: FailStall, Err: fmt.Errorf("no token for %v", o.cfg.TokenTimeout)}
	case err == nil: // the body ended without the done object
		oe = &OllamaError{Endpoint: ep.url, Kind: FailCut, Err: errors.New("the stream ended without Ollama's final done object")}
	default:
		oe = o.classify(ep, err, pieces, lines > 0)
	}
	oe.Pieces = pieces
	if oe.Kind == FailModelMissing && ep.setPresence(chat.Model, PresenceMissing) {
		o.healthChanged()
	}
	o.settle(ep, oe, false)
	if pieces > 0 {
		o.log.Warn("ollama stream failed after output", "endpoint", ep.url, "pieces", pieces, "err", oe)
	}
	return oe
}

// settle reports an attempt's outcome to the endpoint's breaker.
func (o *Ollama) settle(ep *endpoint, oe *OllamaError, neutral bool) {
	switch {
	case neutral:
		ep.breaker.release()
	case oe == nil:
		ep.breaker.success()
	case oe.countsAgainst():
		ep.mu.Lock()
		ep.lastError = oe.Error()
		ep.mu.Unlock()
		ep.breaker.failure(time.Now())
	default:
		ep.mu.Lock()
		ep.lastError = oe.Error()
		ep.mu.Unlock()
		ep.breaker.success() // it answered sensibly
	}
}

// classify turns a client error into an OllamaError. streamed says
// whether lines had arrived (a read error then is a cut).
func (o *Ollama) classify(ep *endpoint, err error, pieces int, streamed bool) *OllamaError {
	oe := &OllamaError{Endpoint: ep.url, Pieces: pieces, Err: err}
	var se api.StatusError
	var opErr *net.OpError
	switch {
	case errors.As(err, &se):
		oe.Status = se.StatusCode
		oe.Err = errors.New(se.ErrorMessage)
		switch {
		case se.StatusCode == http.StatusNotFound:
			oe.Kind = FailModelMissing
		case se.StatusCode == http.StatusServiceUnavailable:
			oe.Kind = FailQueueFull
		case se.StatusCode >= 500:
			oe.Kind = FailServer
		default:
			oe.Kind = FailRequest
		}
	case errors.As(err, &opErr) && opErr.Op == "dial":
		oe.Kind = FailRefused
		if opErr.Timeout() {
			oe.Kind = FailConnect
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		oe.Kind = FailRefused
	case streamed:
		// An {"error": ...} line after output started, or a read error.
		oe.Kind = FailCut
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		// Before any response: a kept-alive connection the server closed
		// (it restarted) or a reset. A fresh connection may well work.
		oe.Kind = FailConnLost
	default:
		// An error line before any output: the server failed this request.
		oe.Kind = FailServer
	}
	return oe
}
