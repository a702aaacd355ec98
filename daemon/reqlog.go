package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// reqLogger writes one INFO line when a request it follows has ended:
// who asked through which link, tokens in and out, the time to the first
// token and in all (both from the request's first frame, as the device
// sees them), and how it ended. The lines of a remote link's requests go
// through a sampler of their own (remoteRequestLines a second, the next
// line out saying how many were held back): a peer flooding INFERs that it
// cancels must not flood the journal. A local application's requests are
// all logged. Refusals before acceptance (BUSY, FORBIDDEN …) are the
// sampled "request refused" event (infer.go, local.go).
type reqLogger struct {
	log   *slog.Logger
	clock clock
	info  RequestInfo
	// sampler, when set, bounds these lines; stats counts those held back.
	sampler *logSampler
	stats   *Stats

	backend  string
	first    time.Time // first piece out of the engine
	res      backends.Result
	genErr   error
	code     serialproto.ErrorCode
	finished bool // Generated was called
}

func (r *reqLogger) Generating(backend string) { r.backend = backend }

func (r *reqLogger) Token(int) {
	if r.first.IsZero() {
		r.first = r.clock.Now()
	}
}

func (r *reqLogger) Generated(res backends.Result, err error, code serialproto.ErrorCode) {
	r.res, r.genErr, r.code, r.finished = res, err, code, true
}

func (r *reqLogger) Delivered(err error) {
	now := r.clock.Now()
	level := slog.LevelInfo
	var suppressed int64
	if r.sampler != nil {
		var ok bool
		if ok, suppressed = r.sampler.takeWithin("request", now, remoteRequestLines, remoteRequestLines); !ok {
			r.stats.suppressed("request")
			if !r.log.Enabled(context.Background(), slog.LevelDebug) {
				return
			}
			level = slog.LevelDebug // held back: per-request detail for whoever turns debug on
		}
	}
	outcome := Outcome(r.genErr, r.code)
	attrs := make([]slog.Attr, 0, 13)
	attrs = append(attrs,
		slog.String("device", r.info.Device),
		slog.String("link", r.info.Link),
	)
	if r.info.Link != LocalLink {
		attrs = append(attrs, slog.Int("seq", int(r.info.Seq)))
	}
	if r.info.Model != "" {
		attrs = append(attrs, slog.String("model", r.info.Model))
	}
	if r.backend != "" {
		attrs = append(attrs, slog.String("backend", r.backend))
	}
	attrs = append(attrs,
		slog.Int("tokens_in", r.res.PromptTokens),
		slog.Int("tokens_out", r.res.Tokens),
	)
	if !r.first.IsZero() {
		attrs = append(attrs, slog.Duration("ttft", r.first.Sub(r.info.First).Round(time.Millisecond)))
	}
	attrs = append(attrs, slog.Duration("total", now.Sub(r.info.First).Round(time.Millisecond)))
	switch {
	case r.genErr != nil:
		attrs = append(attrs, slog.String("outcome", outcome), slog.String("code", r.code.String()), slog.String("err", r.genErr.Error()))
	case err != nil: // generated, but the device did not take the answer
		attrs = append(attrs, slog.String("outcome", "undelivered"), slog.String("err", err.Error()))
	default:
		attrs = append(attrs, slog.String("outcome", outcome))
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int64("suppressed", suppressed))
	}
	r.log.LogAttrs(context.Background(), level, "request", attrs...) // the request's context has ended
}
