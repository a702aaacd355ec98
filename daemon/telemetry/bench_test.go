package telemetry

import (
	"context"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// instantEngine answers "echo: " + the prompt at once, a word per piece.
type instantEngine struct{}

func (instantEngine) Name() string { return "instant" }
func (instantEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	var res backends.Result
	for _, w := range strings.SplitAfter("echo: "+req.Messages[len(req.Messages)-1].Content, " ") {
		if err := emit([]byte(w)); err != nil {
			return res, err
		}
		res.Tokens++
	}
	return res, nil
}
func (instantEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "instant"}, nil
}
func (instantEngine) Healthy(context.Context) error { return nil }
func (instantEngine) Close() error                  { return nil }

// BenchmarkObserverOverhead: the daemon's request path (one device, an
// instant engine, 200-token answers) with nothing observing — the
// baseline — against Prometheus metrics, and metrics plus tracing into an
// in-memory exporter, all in one run: the ratio of the sub-benchmarks'
// ns/op is the observers' cost.
func BenchmarkObserverOverhead(b *testing.B) {
	for _, tc := range []struct {
		name string
		obs  func(d *daemon.Daemon) daemon.Observer
	}{
		{"none", func(*daemon.Daemon) daemon.Observer { return nil }},
		{"metrics", func(d *daemon.Daemon) daemon.Observer { return NewMetrics(d, nil) }},
		{"metrics+tracing", func(d *daemon.Daemon) daemon.Observer {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewNoopExporter()))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			return daemon.Observers(NewMetrics(d, nil), NewTracing(tp))
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			d, err := daemon.New(daemon.Config{DefaultMaxTokens: 1000, PeerRate: -1}, instantEngine{}, nil) // one client far above a device's rate: measure the pipeline, not the limiter
			if err != nil {
				b.Fatal(err)
			}
			d.SetObserver(tc.obs(d))
			l, err := daemon.ListenUDP("127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx, l) }()
			defer func() { cancel(); <-done }()
			tr, err := device.DialUDP(l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			c := device.New(tr, device.Config{DeviceID: "bench"})
			if err := c.Hello(context.Background()); err != nil {
				b.Fatal(err)
			}
			m := &serialproto.Infer{Prompt: strings.Repeat("w ", 199)}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Ask(context.Background(), m, func([]byte) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
