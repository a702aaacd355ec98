package telemetry

import (
	"context"
	"fmt"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Span names: one trace per request, the root from its first frame to its
// final frame, children for the time in the queue, the backend call and
// the delivery of what is left once the engine is done.
const (
	SpanRequest  = "mcpd.request"
	SpanQueue    = "mcpd.queue"
	SpanGenerate = "mcpd.generate"
	SpanDeliver  = "mcpd.deliver"
)

// Tracing is a daemon.Observer that records each request as a trace.
// Frame-level events are left to metrics: a span per frame would cost more
// than the frame.
type Tracing struct {
	tracer trace.Tracer
}

// NewTracing traces through tp.
func NewTracing(tp trace.TracerProvider) *Tracing {
	return &Tracing{tracer: tp.Tracer("github.com/mcpd-project/mcpd/daemon")}
}

func (t *Tracing) RequestStarted(ctx context.Context, info daemon.RequestInfo) (context.Context, daemon.RequestObserver) {
	ctx, root := t.tracer.Start(ctx, SpanRequest, trace.WithTimestamp(info.First), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("mcpd.link", info.Link),
			attribute.String("mcpd.device", info.Device),
			attribute.Int("mcpd.seq", int(info.Seq)),
			attribute.String("mcpd.model", info.Model),
		))
	_, queue := t.tracer.Start(ctx, SpanQueue, trace.WithTimestamp(info.First))
	return ctx, &requestTrace{t: t, ctx: ctx, root: root, queue: queue}
}

// requestTrace follows one request; calls come in order from the
// request's goroutines, never at once.
type requestTrace struct {
	t        *Tracing
	ctx      context.Context
	root     trace.Span
	queue    trace.Span
	generate trace.Span
	deliver  trace.Span
	pieces   int
}

func (r *requestTrace) Generating(backend string) {
	now := time.Now() // one instant: the spans abut
	r.queue.End(trace.WithTimestamp(now))
	r.queue = nil
	_, r.generate = r.t.tracer.Start(r.ctx, SpanGenerate, trace.WithTimestamp(now), trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("mcpd.backend", backend)))
}

func (r *requestTrace) Token(int) {
	if r.pieces++; r.pieces == 1 && r.generate != nil {
		r.generate.AddEvent("first token")
	}
}

func (r *requestTrace) Generated(res backends.Result, err error, code serialproto.ErrorCode) {
	now := time.Now()
	if r.queue != nil { // ended while queued
		r.queue.End(trace.WithTimestamp(now))
	}
	if r.generate != nil {
		r.generate.SetAttributes(
			attribute.Int("mcpd.tokens", res.Tokens),
			attribute.Int("mcpd.prompt_tokens", res.PromptTokens),
			attribute.Int("mcpd.pieces", r.pieces),
		)
		setError(r.generate, err)
		r.generate.End(trace.WithTimestamp(now))
	}
	r.root.SetAttributes(attribute.String("mcpd.outcome", daemon.Outcome(err, code)))
	if err != nil {
		r.root.SetAttributes(attribute.String("mcpd.error_code", code.String()))
	}
	setError(r.root, err)
	_, r.deliver = r.t.tracer.Start(r.ctx, SpanDeliver, trace.WithTimestamp(now))
}

func (r *requestTrace) Delivered(err error) {
	now := time.Now()
	setError(r.deliver, err)
	r.deliver.End(trace.WithTimestamp(now))
	r.root.End(trace.WithTimestamp(now))
}

func setError(s trace.Span, err error) {
	if err != nil {
		s.RecordError(err)
		s.SetStatus(codes.Error, err.Error())
	}
}

// TracerProviderFromEnv returns an OTLP/HTTP exporting tracer provider when
// the standard OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set
// — the exporter reads the other OTEL_EXPORTER_OTLP_* variables itself —
// and nil when neither is: then no tracing observer is installed at all,
// and tracing costs nothing. Call Shutdown on the provider at exit to
// flush.
func TracerProviderFromEnv(ctx context.Context, getenv func(string) string, version string) (*sdktrace.TracerProvider, error) {
	if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return nil, nil
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		if p := getenv(k); p != "" && p != "http/protobuf" {
			return nil, fmt.Errorf("telemetry: %s=%s: mcpd exports OTLP over http/protobuf only", k, p)
		}
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", "mcpd"), attribute.String("service.version", version)))
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(5*time.Second)),
		sdktrace.WithResource(res),
	), nil
}
