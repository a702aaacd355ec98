package daemon

import (
	"context"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Observer follows the daemon's requests, for tracing and latency
// histograms. Counting is not its job: the daemon counts every event in
// its Stats (stats.go), which /status and the Prometheus collector read.
// The daemon imports no metrics or tracing library: an adapter (package
// daemon/telemetry) turns these calls into OpenTelemetry spans and
// Prometheus histograms. Methods run on the daemon's hot paths (a link's
// read loop, a stream's send loop): they must be cheap and never block.
// With no observer set, each hook costs one nil check.
type Observer interface {
	// RequestStarted is called once per accepted request; the returned
	// RequestObserver (which may be nil) follows it to its end. The
	// returned context (ctx itself, or one carrying a trace span) becomes
	// the request's: the backend call runs under it.
	RequestStarted(ctx context.Context, info RequestInfo) (context.Context, RequestObserver)
}

// RequestInfo describes an accepted request.
type RequestInfo struct {
	// Link is the name of the link the request came through
	// ("udp:127.0.0.1:7700", "serial:/dev/ttyUSB0", "http"): bounded by
	// the configuration, never by the devices, so a safe metrics label.
	Link   string
	Device string    // device id, or the local client's name
	Seq    uint8     // the INFER's seq (0 for local requests)
	First  time.Time // when its first frame (or HTTP request) arrived
	Model  string
}

// RequestObserver follows one request: queued, then generating, then
// delivered. Calls come from the request's goroutines in this order:
// Generating once (unless it ended in the queue), Token per piece, Generated
// once, Delivered once.
type RequestObserver interface {
	// Generating: the request got an engine slot; the backend call starts.
	Generating(backend string)
	// Token: one piece of output of n bytes left the engine.
	Token(n int)
	// Generated: the backend call ended; code is the protocol's error
	// code for err (meaningless when err is nil).
	Generated(res backends.Result, err error, code serialproto.ErrorCode)
	// Delivered: the final frame went out and was acknowledged (err nil)
	// or the stream ended without that.
	Delivered(err error)
}

// Outcome names how a request ended, for metrics labels.
func Outcome(err error, code serialproto.ErrorCode) string {
	switch {
	case err == nil:
		return "done"
	case code == serialproto.CodeCancelled:
		return "cancelled"
	case code == serialproto.CodeTimeout:
		return "timeout"
	}
	return "failed"
}

// SetObserver installs o; call before Run. Several observers combine with
// Observers.
func (d *Daemon) SetObserver(o Observer) { d.obs = o }

// Observers combines observers into one that calls each in turn.
func Observers(obs ...Observer) Observer {
	var list multiObserver
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return list
}

type multiObserver []Observer

func (m multiObserver) RequestStarted(ctx context.Context, info RequestInfo) (context.Context, RequestObserver) {
	var list multiRequest
	for _, o := range m {
		var r RequestObserver
		if ctx, r = o.RequestStarted(ctx, info); r != nil {
			list = append(list, r)
		}
	}
	if len(list) == 0 {
		return ctx, nil
	}
	return ctx, list
}

type multiRequest []RequestObserver

func (m multiRequest) Generating(backend string) {
	for _, r := range m {
		r.Generating(backend)
	}
}

func (m multiRequest) Token(n int) {
	for _, r := range m {
		r.Token(n)
	}
}

func (m multiRequest) Generated(res backends.Result, err error, code serialproto.ErrorCode) {
	for _, r := range m {
		r.Generated(res, err, code)
	}
}

func (m multiRequest) Delivered(err error) {
	for _, r := range m {
		r.Delivered(err)
	}
}

// requestObserver starts observing a request: the request log always, and
// the installed observers.
func (d *Daemon) requestObserver(ctx context.Context, info RequestInfo) (context.Context, RequestObserver) {
	rl := &reqLogger{log: d.log, clock: d.clock, info: info}
	if info.Link != LocalLink { // a remote peer's: bounded (reqlog.go)
		rl.sampler, rl.stats = &d.reqLines, &d.stats
	}
	if d.obs == nil {
		return ctx, rl
	}
	ctx, o := d.obs.RequestStarted(ctx, info)
	if o == nil {
		return ctx, rl
	}
	return ctx, multiRequest{o, rl}
}
