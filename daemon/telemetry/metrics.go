// Package telemetry exposes the daemon to Prometheus and OpenTelemetry:
// its counters (daemon.Stats) and state (daemon.Snapshot) as metrics read
// at scrape time, and its Observer events as latency histograms and
// traces. It is the only place those libraries meet the daemon: package
// daemon exposes hooks, counters and a Snapshot, and knows nothing of
// either.
package telemetry

import (
	"context"
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

// Source is the daemon's side of the metrics and the status:
// *daemon.Daemon. Its Stats are the counters — the same the /status
// document shows — read at scrape time; nothing here counts on its own.
type Source interface {
	Snapshot(ctx context.Context) daemon.Snapshot
	Stats() *daemon.Stats
}

// Metrics exposes the daemon's counters and state to Prometheus, read at
// scrape time, and is a daemon.Observer for what only events can give: the
// latency histograms. Labels are bounded by the configuration (links,
// engines) and the protocol (commands, error codes), never by devices or
// prompts.
type Metrics struct {
	reg        *prometheus.Registry
	ttft       *prometheus.HistogramVec
	interToken prometheus.Histogram
}

// NewMetrics registers mcpd's metrics, the Go runtime's and the process's
// in a fresh registry. src and backend (either may be nil) are read at
// scrape time: the counters, queue depth and running requests, backend
// selection and breaker states.
func NewMetrics(src Source, backend BackendReporter) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mcpd_time_to_first_token_seconds", Help: "From a request's first frame to the engine's first piece of output.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"link"}),
		interToken: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mcpd_inter_token_seconds", Help: "Time between consecutive pieces of engine output.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
	}
	m.reg.MustRegister(m.ttft, m.interToken,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{src: src, backend: backend})
	return m
}

// Registry is where the metrics live, for the HTTP handler.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) RequestStarted(ctx context.Context, info daemon.RequestInfo) (context.Context, daemon.RequestObserver) {
	return ctx, &requestMetrics{m: m, link: info.Link, first: info.First}
}

// requestMetrics follows one request; its methods are called in order from
// the request's goroutine, so it needs no lock.
type requestMetrics struct {
	m     *Metrics
	link  string
	first time.Time
	last  time.Time // the previous piece; zero before the first
}

func (r *requestMetrics) Generating(string) {}

func (r *requestMetrics) Token(int) {
	now := time.Now()
	if r.last.IsZero() {
		r.m.ttft.WithLabelValues(r.link).Observe(now.Sub(r.first).Seconds())
	} else {
		r.m.interToken.Observe(now.Sub(r.last).Seconds())
	}
	r.last = now
}

func (r *requestMetrics) Generated(backends.Result, error, serialproto.ErrorCode) {}
func (r *requestMetrics) Delivered(error)                                         {}

// stateCollector reads the daemon's counters and the gauges that are
// state, not events, at scrape time: nothing on the hot path keeps them.
type stateCollector struct {
	src     Source
	backend BackendReporter
}

var (
	framesDesc      = prometheus.NewDesc("mcpd_frames_total", "Sound frames received (direction=in) and sent (out), by link and command.", []string{"link", "direction", "command"}, nil)
	badFramesDesc   = prometheus.NewDesc("mcpd_bad_frames_total", "Frames rejected before parsing, by link and reason (crc, too_long, malformed).", []string{"link", "reason"}, nil)
	skippedDesc     = prometheus.NewDesc("mcpd_resync_skipped_bytes_total", "Bytes a serial link's decoder discarded while resynchronising.", []string{"link"}, nil)
	retransmitsDesc = prometheus.NewDesc("mcpd_retransmissions_total", "Stream chunks sent again (timeout, duplicate ACKs, NACK).", []string{"link"}, nil)
	reconnectsDesc  = prometheus.NewDesc("mcpd_serial_reconnects_total", "Serial ports reopened after they went away.", []string{"link"}, nil)
	sessionsDesc    = prometheus.NewDesc("mcpd_sessions", "Open device sessions, by link.", []string{"link"}, nil)
	requestsDesc    = prometheus.NewDesc("mcpd_requests_total", "Requests by link, outcome (done, failed, cancelled, timeout, refused) and protocol error code (none when done).", []string{"link", "outcome", "code"}, nil)
	tokensDesc      = prometheus.NewDesc("mcpd_tokens_generated_total", "Tokens generated, by backend.", []string{"backend"}, nil)
	queueDesc       = prometheus.NewDesc("mcpd_queue_depth", "Accepted requests waiting for an engine slot.", nil, nil)
	runningDesc     = prometheus.NewDesc("mcpd_requests_running", "Requests holding an engine slot.", nil, nil)
	readyDesc       = prometheus.NewDesc("mcpd_ready", "1 when the daemon takes requests (state ready).", nil, nil)
	linkUpDesc      = prometheus.NewDesc("mcpd_link_up", "1 for a link (each serial port) that is up, 0 for one that cannot be opened or was lost.", []string{"link"}, nil)
	selectedDesc    = prometheus.NewDesc("mcpd_backend_selected", "1 for the backend in use, with why it was chosen.", []string{"backend", "reason"}, nil)
	suppressedDesc  = prometheus.NewDesc("mcpd_log_lines_suppressed_total", "Log lines remote peers caused that the sampler held back (written at debug level only), by event.", []string{"event"}, nil)
	guardDesc       = prometheus.NewDesc("mcpd_guard_total", "Hostile-peer defences at work: sessions evicted, frames over a source's rate, HELLOs and INFERs the policy refused.", []string{"action"}, nil)
	breakerDesc     = prometheus.NewDesc("mcpd_backend_breaker_state", "Circuit breaker of each backend: 0 closed, 1 half-open, 2 open.", []string{"backend"}, nil)
	cacheDesc       = prometheus.NewDesc("mcpd_response_cache_total", "Response cache events: hit, miss, skipped (a sampled request), evicted.", []string{"event"}, nil)
	cacheBytesDesc  = prometheus.NewDesc("mcpd_response_cache_bytes", "Bytes the response cache holds.", nil, nil)
	kvCacheDesc     = prometheus.NewDesc("mcpd_kv_cache_total", "Engine KV cache events: hit (a request found part of its prompt evaluated), miss (none), evicted (a conversation's cache dropped for the budget).", []string{"event"}, nil)
	kvBytesDesc     = prometheus.NewDesc("mcpd_kv_cache_bytes", "Bytes the engines' KV caches of conversations between turns hold.", nil, nil)
	promptDesc      = prometheus.NewDesc("mcpd_prompt_tokens_total", "Prompt tokens of engine requests, by whether the engine's KV cache held them (cached) or they were evaluated.", []string{"source"}, nil)
	toolCallsDesc   = prometheus.NewDesc("mcpd_tool_calls_total", "Device tool calls (protocol.md §16): sent to devices (TOOL_CALL), and of them unanswered within the tool timeout.", []string{"event"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{framesDesc, badFramesDesc, skippedDesc, retransmitsDesc, reconnectsDesc,
		sessionsDesc, requestsDesc, tokensDesc, queueDesc, runningDesc, readyDesc, linkUpDesc, selectedDesc, breakerDesc, suppressedDesc, guardDesc,
		cacheDesc, cacheBytesDesc, kvCacheDesc, kvBytesDesc, promptDesc, toolCallsDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.src != nil {
		collectCounters(ch, c.src.Stats())
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
		for _, l := range s.LinkStates {
			up := 0.0
			if l.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(linkUpDesc, prometheus.GaugeValue, up, l.Name)
		}
		if c := s.Cache; c != nil {
			if c.Budget > 0 {
				for event, n := range map[string]int64{"hit": c.Hits, "miss": c.Misses, "skipped": c.Skipped, "evicted": c.Evictions} {
					ch <- prometheus.MustNewConstMetric(cacheDesc, prometheus.CounterValue, float64(n), event)
				}
				ch <- prometheus.MustNewConstMetric(cacheBytesDesc, prometheus.GaugeValue, float64(c.Bytes))
			}
			if c.KV.Engines > 0 {
				for event, n := range map[string]int64{"hit": c.KV.Hits, "miss": c.KV.Misses, "evicted": c.KV.Evictions} {
					ch <- prometheus.MustNewConstMetric(kvCacheDesc, prometheus.CounterValue, float64(n), event)
				}
				ch <- prometheus.MustNewConstMetric(kvBytesDesc, prometheus.GaugeValue, float64(c.KV.Bytes))
			}
			if c.KV.PromptTokens > 0 {
				ch <- prometheus.MustNewConstMetric(promptDesc, prometheus.CounterValue, float64(c.KV.PromptCached), "cached")
				ch <- prometheus.MustNewConstMetric(promptDesc, prometheus.CounterValue, float64(c.KV.PromptTokens-c.KV.PromptCached), "evaluated")
			}
		}
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

// collectCounters turns the daemon's counters into series: a series exists
// once it has counted something (a link's sessions gauge once a session
// opened there), as a counter vector's children do.
func collectCounters(ch chan<- prometheus.Metric, st *daemon.Stats) {
	counter := func(d *prometheus.Desc, n int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), labels...)
	}
	for _, l := range st.Links() {
		for _, f := range l.Frames {
			counter(framesDesc, f.N, l.Link, f.Direction.String(), f.Command.String())
		}
		for reason, n := range l.BadFrames {
			counter(badFramesDesc, n, l.Link, reason)
		}
		for _, r := range l.Requests {
			counter(requestsDesc, r.N, l.Link, r.Outcome, r.Code)
		}
		if l.Retransmits > 0 {
			counter(retransmitsDesc, l.Retransmits, l.Link)
		}
		if l.SkippedBytes > 0 {
			counter(skippedDesc, l.SkippedBytes, l.Link)
		}
		if l.Reconnects > 0 {
			counter(reconnectsDesc, l.Reconnects, l.Link)
		}
		if l.HadSessions {
			ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(l.Sessions), l.Link)
		}
	}
	for engine, n := range st.Tokens() {
		counter(tokensDesc, n, engine)
	}
	for event, n := range st.SuppressedLogs() {
		counter(suppressedDesc, n, event)
	}
	for action, n := range map[string]int64{"evicted": st.Evicted.Load(), "rate_limited": st.RateLimited.Load(), "forbidden": st.Forbidden.Load(), "unanswered": st.Unanswered.Load()} {
		counter(guardDesc, n, action)
	}
	if sent := st.ToolCalls.Load(); sent > 0 { // a series once a device has been called
		counter(toolCallsDesc, sent, "sent")
		counter(toolCallsDesc, st.ToolTimeouts.Load(), "timeout")
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
