package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/daemon/httpapi"
	"github.com/mcpd-project/mcpd/daemon/telemetry"
)

// observability is the local HTTP endpoint, the metrics and the tracing
// around a daemon (docs/observability.md).
type observability struct {
	ln       net.Listener // nil: the endpoint is off
	metrics  *telemetry.Metrics
	shutdown func(context.Context) error // flushes traces
}

// setupObservability installs the metrics (when the endpoint is on) and the
// tracing (when OTEL_EXPORTER_OTLP_ENDPOINT is set) on d, and opens the
// endpoint's socket, so a port in use fails the start, not later.
func setupObservability(ctx context.Context, cfg config, getenv func(string) string, d *daemon.Daemon, b backends.Backend, log *slog.Logger) (*observability, error) {
	o := &observability{shutdown: func(context.Context) error { return nil }}
	addr, enabled, err := httpapi.ParseAddr(cfg.HTTP.Listen)
	if err != nil {
		return nil, err
	}
	var observers []daemon.Observer
	if enabled {
		o.metrics = telemetry.NewMetrics(d, backendReporter(cfg, b))
		observers = append(observers, o.metrics)
		if o.ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("http endpoint: %w", err)
		}
	}
	tp, err := telemetry.TracerProviderFromEnv(ctx, getenv, version)
	if err != nil {
		if o.ln != nil {
			o.ln.Close()
		}
		return nil, err
	}
	if tp != nil {
		observers = append(observers, telemetry.NewTracing(tp))
		o.shutdown = tp.Shutdown
		log.Info("tracing: exporting over OTLP")
	}
	d.SetObserver(daemon.Observers(observers...))
	return o, nil
}

// serve runs the endpoint until ctx is done; it keeps answering while the
// daemon drains (readyz says so), so cancel ctx after Run returns.
func (o *observability) serve(ctx context.Context, d *daemon.Daemon, cfg config, b backends.Backend, log *slog.Logger) {
	if o.ln == nil {
		return
	}
	srv := httpapi.New(httpapi.Config{Daemon: d, Metrics: o.metrics, Backend: backendReporter(cfg, b), Version: version, Log: log,
		ReadyNeedsLink: cfg.HTTP.ReadyNeedsLink, AllowedHosts: cfg.HTTP.AllowedHosts, AllowedOrigins: cfg.HTTP.AllowedOrigins, MaxConns: cfg.HTTP.MaxConns})
	log.Info("http endpoint up", "addr", o.ln.Addr().String())
	if err := srv.Serve(ctx, o.ln, 2*time.Second); err != nil {
		log.Error("http endpoint failed", "err", err)
	}
}

// backendReporter describes the engine for /status and the metrics: the
// engine chosen and why, and — for Ollama's endpoints behind circuit
// breakers — each endpoint's breaker and requests in flight.
func backendReporter(cfg config, b backends.Backend) telemetry.BackendReporter {
	return func() telemetry.BackendInfo {
		info := telemetry.BackendInfo{Chosen: b.Name(), Reason: "configured: backend = " + cfg.Backend}
		var eps []backends.EndpointStatus
		switch e := b.(type) {
		case backends.SelectionReporter:
			st := e.Status()
			info.Chosen, info.Reason, eps = st.Chosen, st.Reason, st.Endpoints
		case backends.EndpointReporter:
			eps = e.Endpoints()
		}
		if len(eps) > 0 {
			info.Breakers, info.InFlight = map[string]string{}, map[string]int{}
			for _, ep := range eps {
				key := "ollama@" + ep.URL
				info.Breakers[key], info.InFlight[key] = ep.Breaker, int(ep.InFlight)
			}
		}
		return info
	}
}
