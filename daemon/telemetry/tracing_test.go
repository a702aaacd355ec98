package telemetry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// wordEngine answers "echo: " + the prompt one word per piece, failing
// after fail pieces when fail > 0.
type wordEngine struct{ fail int }

func (e *wordEngine) Name() string { return "words" }
func (e *wordEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	var res backends.Result
	for i, w := range strings.SplitAfter("echo: "+req.Messages[len(req.Messages)-1].Content, " ") {
		if e.fail > 0 && i == e.fail {
			return res, backends.ErrFailed
		}
		time.Sleep(time.Millisecond)
		if err := emit([]byte(w)); err != nil {
			return res, err
		}
		res.Tokens++
	}
	return res, nil
}
func (e *wordEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "words"}, nil
}
func (e *wordEngine) Healthy(context.Context) error { return nil }
func (e *wordEngine) Close() error                  { return nil }

// runDaemon serves e on loopback UDP with obs installed.
func runDaemon(t *testing.T, e backends.Backend, obs daemon.Observer) (*daemon.Daemon, string) {
	t.Helper()
	d, err := daemon.New(daemon.Config{}, e, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.SetObserver(obs)
	l, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return d, l.Addr().String()
}

func deviceAsk(t *testing.T, addr, prompt string) error {
	t.Helper()
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// A small max_data makes the prompt several fragments: the trace starts
	// at the first.
	c := device.New(tr, device.Config{DeviceID: "traced", MaxData: 32})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func([]byte) error { return nil })
	return err
}

func waitSpans(t *testing.T, exp *tracetest.InMemoryExporter, n int) tracetest.SpanStubs {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(exp.GetSpans()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d spans, want %d: %v", len(exp.GetSpans()), n, exp.GetSpans())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return exp.GetSpans()
}

func byName(spans tracetest.SpanStubs) map[string]tracetest.SpanStub {
	m := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		m[s.Name] = s
	}
	return m
}

func TestOneTracePerRequest(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	_, addr := runDaemon(t, &wordEngine{}, NewTracing(tp))

	before := time.Now()
	if err := deviceAsk(t, addr, strings.Repeat("fragmented prompt ", 8)); err != nil {
		t.Fatal(err)
	}
	spans := byName(waitSpans(t, exp, 4))
	root, queue, gen, deliver := spans[SpanRequest], spans[SpanQueue], spans[SpanGenerate], spans[SpanDeliver]
	if !root.SpanContext.IsValid() || root.Parent.IsValid() {
		t.Fatalf("root span %+v", root)
	}
	for _, child := range []tracetest.SpanStub{queue, gen, deliver} {
		if child.SpanContext.TraceID() != root.SpanContext.TraceID() || child.Parent.SpanID() != root.SpanContext.SpanID() {
			t.Fatalf("%s is not a child of %s", child.Name, SpanRequest)
		}
		if child.StartTime.Before(root.StartTime) || child.EndTime.After(root.EndTime) {
			t.Fatalf("%s [%v, %v] outside the request [%v, %v]", child.Name, child.StartTime, child.EndTime, root.StartTime, root.EndTime)
		}
	}
	// The trace runs from the first frame to the acknowledged final frame:
	// queue, then generate, then deliver.
	if root.StartTime.Before(before) || queue.EndTime.After(gen.StartTime) || gen.EndTime.After(deliver.StartTime) || !deliver.EndTime.Equal(root.EndTime) {
		t.Fatalf("order: root %v, queue end %v, generate [%v, %v], deliver [%v, %v], root end %v",
			root.StartTime, queue.EndTime, gen.StartTime, gen.EndTime, deliver.StartTime, deliver.EndTime, root.EndTime)
	}
	attrs := map[string]string{}
	for _, a := range append(root.Attributes, gen.Attributes...) {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	if attrs["mcpd.device"] != "traced" || attrs["mcpd.backend"] != "words" || attrs["mcpd.outcome"] != "done" || attrs["mcpd.tokens"] != "18" {
		t.Fatalf("attributes %v", attrs)
	}
	if len(gen.Events) != 1 || gen.Events[0].Name != "first token" {
		t.Fatalf("generate events %+v", gen.Events)
	}
}

func TestFailedRequestTrace(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	_, addr := runDaemon(t, &wordEngine{fail: 2}, NewTracing(tp))
	var perr *serialproto.Error
	if err := deviceAsk(t, addr, "one two three"); !errors.As(err, &perr) || perr.Code != serialproto.CodeBackendFailed {
		t.Fatalf("want BACKEND_FAILED, got %v", err)
	}
	spans := byName(waitSpans(t, exp, 4))
	root, gen := spans[SpanRequest], spans[SpanGenerate]
	if root.Status.Code != codes.Error || gen.Status.Code != codes.Error {
		t.Fatalf("status: root %v, generate %v", root.Status, gen.Status)
	}
	var code string
	for _, a := range root.Attributes {
		if a.Key == "mcpd.error_code" {
			code = a.Value.Emit()
		}
	}
	if code != "BACKEND_FAILED" {
		t.Fatalf("error code attribute %q", code)
	}
}

func TestNoTracingWithoutEndpoint(t *testing.T) {
	tp, err := TracerProviderFromEnv(context.Background(), func(string) string { return "" }, "test")
	if tp != nil || err != nil {
		t.Fatalf("without OTEL_EXPORTER_OTLP_ENDPOINT: %v, %v", tp, err)
	}
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
	if _, err := TracerProviderFromEnv(context.Background(), func(k string) string { return env[k] }, "test"); err == nil {
		t.Fatal("grpc protocol accepted")
	}
	delete(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
	tp, err = TracerProviderFromEnv(context.Background(), func(k string) string { return env[k] }, "test")
	if err != nil || tp == nil {
		t.Fatalf("with an endpoint: %v, %v", tp, err)
	}
	_ = tp.Shutdown(context.Background())
}
