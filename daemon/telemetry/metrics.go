// Package telemetry turns the daemon's Observer events into Prometheus
// metrics and OpenTelemetry traces. It is the only place those libraries
// meet the daemon: package daemon exposes hooks and a Snapshot, and knows
// nothing of either.
package telemetry

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// BackendInfo is what the backend layer reports beyond the daemon's view:
// the engine in use, why it was chosen, and its circuit breakers. The
// backend selector fills it; with a single engine it is just the name.
type BackendInfo struct {
	Chosen   string            `json:"chosen"`
	Reason   string            `json:"reason,omitempty"`
	Breakers map[string]string `json:"breakers,omitempty"` // engine → "closed", "half-open" or "open"
	InFlight map[string]int    `json:"in_flight,omitempty"`
}

// BackendReporter returns the backend layer's state now. It is called at
// every scrape and status request: it must be cheap.
type BackendReporter func() BackendInfo

// SnapshotSource is the daemon's side of the status: *daemon.Daemon.
type SnapshotSource interface {
	Snapshot(ctx context.Context) daemon.Snapshot
}

// Metrics is a daemon.Observer that keeps Prometheus metrics. Labels are
// bounded by the configuration (links, engines) and the protocol (commands,
// error codes), never by devices or prompts.
type Metrics struct {
	reg *prometheus.Registry

	frames      *prometheus.CounterVec
	badFrames   *prometheus.CounterVec
	skipped     *prometheus.CounterVec
	retransmits *prometheus.CounterVec
	reconnects  *prometheus.CounterVec
	sessions    *prometheus.GaugeVec
	requests    *prometheus.CounterVec
	ttft        *prometheus.HistogramVec
	interToken  prometheus.Histogram
	tokens      *prometheus.CounterVec

	// frameCounters caches frames' children: a label lookup hashes three
	// strings, the cache one small struct.
	frameCounters sync.Map // frameKey → prometheus.Counter
}

type frameKey struct {
	link string
	dir  daemon.FrameDirection
	cmd  serialproto.Command
}

// NewMetrics registers mcpd's metrics, the Go runtime's and the process's
// in a fresh registry. src and backend (either may be nil) feed the gauges
// read at scrape time: queue depth, running requests, backend selection
// and breaker states.
func NewMetrics(src SnapshotSource, backend BackendReporter) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_frames_total", Help: "Sound frames received (direction=in) and sent (out), by link and command.",
		}, []string{"link", "direction", "command"}),
		badFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_bad_frames_total", Help: "Frames rejected before parsing, by link and reason (crc, too_long, malformed).",
		}, []string{"link", "reason"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_resync_skipped_bytes_total", Help: "Bytes a serial link's decoder discarded while resynchronising.",
		}, []string{"link"}),
		retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_retransmissions_total", Help: "Stream chunks sent again (timeout, duplicate ACKs, NACK).",
		}, []string{"link"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_serial_reconnects_total", Help: "Serial ports reopened after they went away.",
		}, []string{"link"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mcpd_sessions", Help: "Open device sessions, by link.",
		}, []string{"link"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_requests_total", Help: "Requests by link, outcome (done, failed, cancelled, timeout, refused) and protocol error code (none when done).",
		}, []string{"link", "outcome", "code"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mcpd_time_to_first_token_seconds", Help: "From a request's first frame to the engine's first piece of output.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"link"}),
		interToken: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mcpd_inter_token_seconds", Help: "Time between consecutive pieces of engine output.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_tokens_generated_total", Help: "Tokens generated, by backend.",
		}, []string{"backend"}),
	}
	m.reg.MustRegister(m.frames, m.badFrames, m.skipped, m.retransmits, m.reconnects,
		m.sessions, m.requests, m.ttft, m.interToken, m.tokens,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{src: src, backend: backend})
	return m
}

// Registry is where the metrics live, for the HTTP handler.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) Frame(link string, dir daemon.FrameDirection, cmd serialproto.Command) {
	key := frameKey{link, dir, cmd}
	c, ok := m.frameCounters.Load(key)
	if !ok {
		c, _ = m.frameCounters.LoadOrStore(key, m.frames.WithLabelValues(link, dir.String(), cmd.String()))
	}
	c.(prometheus.Counter).Inc()
}

func (m *Metrics) BadFrame(link string, err error) {
	reason := "malformed"
	switch {
	case errors.Is(err, serialproto.ErrBadCRC):
		reason = "crc"
	case errors.Is(err, serialproto.ErrTooLong):
		reason = "too_long"
	}
	m.badFrames.WithLabelValues(link, reason).Inc()
}

func (m *Metrics) Retransmit(link string)    { m.retransmits.WithLabelValues(link).Inc() }
func (m *Metrics) SessionOpened(link string) { m.sessions.WithLabelValues(link).Inc() }
func (m *Metrics) SessionClosed(link string) { m.sessions.WithLabelValues(link).Dec() }

func (m *Metrics) Refused(link string, code serialproto.ErrorCode) {
	m.requests.WithLabelValues(link, "refused", code.String()).Inc()
}

func (m *Metrics) LinkStats(link string, skipped int64, reconnects int) {
	if skipped > 0 {
		m.skipped.WithLabelValues(link).Add(float64(skipped))
	}
	if reconnects > 0 {
		m.reconnects.WithLabelValues(link).Add(float64(reconnects))
	}
}

func (m *Metrics) RequestStarted(ctx context.Context, info daemon.RequestInfo) (context.Context, daemon.RequestObserver) {
	return ctx, &requestMetrics{m: m, link: info.Link, first: info.First}
}

// requestMetrics follows one request; its methods are called in order from
// the request's goroutine, so it needs no lock.
type requestMetrics struct {
	m       *Metrics
	link    string
	backend string
	first   time.Time
	last    time.Time // the previous piece; zero before the first
}

func (r *requestMetrics) Generating(backend string) { r.backend = backend }

func (r *requestMetrics) Token(int) {
	now := time.Now()
	if r.last.IsZero() {
		r.m.ttft.WithLabelValues(r.link).Observe(now.Sub(r.first).Seconds())
	} else {
		r.m.interToken.Observe(now.Sub(r.last).Seconds())
	}
	r.last = now
}

func (r *requestMetrics) Generated(res backends.Result, err error, code serialproto.ErrorCode) {
	if res.Tokens > 0 {
		r.m.tokens.WithLabelValues(r.backend).Add(float64(res.Tokens))
	}
	codeLabel := "none"
	if err != nil {
		codeLabel = code.String()
	}
	r.m.requests.WithLabelValues(r.link, daemon.Outcome(err, code), codeLabel).Inc()
}

func (r *requestMetrics) Delivered(error) {}

// stateCollector reads the gauges that are state, not events, at scrape
// time: nothing on the hot path keeps them.
type stateCollector struct {
	src     SnapshotSource
	backend BackendReporter
}

var (
	queueDesc    = prometheus.NewDesc("mcpd_queue_depth", "Accepted requests waiting for an engine slot.", nil, nil)
	runningDesc  = prometheus.NewDesc("mcpd_requests_running", "Requests holding an engine slot.", nil, nil)
	readyDesc    = prometheus.NewDesc("mcpd_ready", "1 when the daemon takes requests (state ready).", nil, nil)
	selectedDesc = prometheus.NewDesc("mcpd_backend_selected", "1 for the backend in use, with why it was chosen.", []string{"backend", "reason"}, nil)
	breakerDesc  = prometheus.NewDesc("mcpd_backend_breaker_state", "Circuit breaker of each backend: 0 closed, 1 half-open, 2 open.", []string{"backend"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueDesc, runningDesc, readyDesc, selectedDesc, breakerDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.src != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s := c.src.Snapshot(ctx)
		cancel()
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(s.Queued))
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, float64(s.Running))
		ready := 0.0
		if s.State == "ready" {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, ready)
	}
	if c.backend != nil {
		b := c.backend()
		if b.Chosen != "" {
			ch <- prometheus.MustNewConstMetric(selectedDesc, prometheus.GaugeValue, 1, b.Chosen, b.Reason)
		}
		for name, state := range b.Breakers {
			ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, breakerValue(state), name)
		}
	}
}

func breakerValue(state string) float64 {
	switch state {
	case "open":
		return 2
	case "half-open", "half_open":
		return 1
	}
	return 0
}
