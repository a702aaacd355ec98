package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/serialproto"
)

// LocalLink names the link of local applications' requests in metrics,
// traces and status.
const LocalLink = "http"

// Why a local request was refused before it ran; wrapped in a RequestError
// whose Code is the protocol's (BUSY for both).
var (
	// ErrQueueFull: as many requests are running or queued as the daemon
	// takes (max_concurrent + max_queue) — the device's ERROR BUSY
	// "request queue full".
	ErrQueueFull = errors.New("daemon: request queue full")
	// ErrClientBusy: this client already holds the local share of the
	// queue (LocalShare) — the device's ERROR BUSY "this device has too
	// many requests".
	ErrClientBusy = errors.New("daemon: this client has too many requests")
	// ErrNotRunning: Generate (or AddLink) was called before Run or after it ended.
	ErrNotRunning = errors.New("daemon: not serving")
)

// RequestError is why a local request did not complete, with the
// protocol error code a device would have received in its place.
type RequestError struct {
	Code serialproto.ErrorCode
	Err  error
}

func (e *RequestError) Error() string { return fmt.Sprintf("%v (%v)", e.Err, e.Code) }
func (e *RequestError) Unwrap() error { return e.Err }

// LocalRequest is a generation asked for by an application on this machine
// (the HTTP API's POST /v1/generate).
type LocalRequest struct {
	// Client identifies the caller — the HTTP API gives its address, never
	// a name the caller chose —: each client may hold at most the local
	// share of the queue (Config.LocalShare).
	Client string
	Model  string
	System string
	Prompt string
	// Messages, when set, is a whole conversation (an OpenAI or Ollama chat
	// request) sent instead of Prompt; System, if set, goes first.
	Messages []backends.Message
	// Options for the engine; MaxTokens 0 takes the daemon's default.
	Options backends.Options
	// Deadline shortens the daemon's RequestTimeout; 0 keeps it.
	Deadline time.Duration
}

// Generate runs a local application's request through the same admission
// as a device's INFER — the per-device cap (per Client), the queue bound,
// the engine slots, the drain — calling emit with each piece of output.
// A refusal or failure is a *RequestError carrying the protocol's code;
// a refusal for load wraps ErrQueueFull or ErrClientBusy. The request ends
// when ctx does (the caller went away), at the deadline, or when the
// daemon's drain gives up on it.
func (d *Daemon) Generate(ctx context.Context, req LocalRequest, emit backends.Emit) (backends.Result, error) {
	first := d.clock.Now()
	refuse := func(code serialproto.ErrorCode, err error) (backends.Result, error) {
		d.stats.refused(LocalLink, code)
		d.remoteLog(slog.LevelInfo, "request refused", "device", req.Client, "link", LocalLink, "code", code.String(), "reason", err.Error())
		return backends.Result{}, &RequestError{Code: code, Err: err}
	}
	switch {
	case !d.links.serving():
		return refuse(serialproto.CodeBackendUnavailable, ErrNotRunning)
	case d.admission.isDraining():
		return refuse(serialproto.CodeShuttingDown, errShuttingDown)
	}
	t, err := d.admission.admitAs(d.local.client(req.Client), claim{local: true, holderMax: localLimit(d.conf())}, 0)
	switch {
	case errors.Is(err, errHolderFull):
		return refuse(serialproto.CodeBusy, ErrClientBusy)
	case errors.Is(err, errLocalFull):
		return refuse(serialproto.CodeBusy, fmt.Errorf("%w: %w", ErrQueueFull, err))
	case err != nil:
		return refuse(refusal(err).Code, err)
	}
	defer t.release()
	d.stats.Accepted.Add(1)

	deadline := d.conf().RequestTimeout
	if req.Deadline > 0 {
		deadline = min(deadline, req.Deadline)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx, cancelTimeout := context.WithTimeout(ctx, deadline)
	defer cancelTimeout()
	unregister := d.local.register(cancel)
	defer unregister()
	ctx, obs := d.requestObserver(ctx, RequestInfo{Link: LocalLink, Device: req.Client, First: first, Model: req.Model})

	res, err := d.generate(ctx, "local:"+req.Client, func() backends.Request { return d.localRequest(req) }, nil, obs, emit)
	t.generated(res.Tokens)
	var code serialproto.ErrorCode
	if err != nil {
		code = errorCode(err, context.Cause(ctx))
		if errors.Is(context.Cause(ctx), context.Canceled) {
			code = serialproto.CodeCancelled // the caller went away
		}
		err = &RequestError{Code: code, Err: err}
	}
	d.stats.ended(LocalLink, err, code, code == serialproto.CodeCancelled)
	if obs != nil {
		obs.Generated(res, err, code)
		obs.Delivered(err) // the pieces went out as they came: delivery ends with generation
	}
	return res, err
}

// localRequest is the engine's request for a local one.
func (d *Daemon) localRequest(req LocalRequest) backends.Request {
	msgs := make([]backends.Message, 0, 2)
	if req.System != "" {
		msgs = append(msgs, backends.Message{Role: backends.RoleSystem, Content: req.System})
	}
	if len(req.Messages) > 0 {
		msgs = append(msgs, req.Messages...)
	} else {
		msgs = append(msgs, backends.Message{Role: backends.RoleUser, Content: req.Prompt})
	}
	opts := req.Options
	if opts.MaxTokens <= 0 {
		opts.MaxTokens = d.conf().DefaultMaxTokens
	}
	opts.MaxTokens = min(opts.MaxTokens, d.conf().MaxTokens)
	return backends.Request{Model: req.Model, Messages: msgs, Options: opts}
}

// localRequests tracks local applications' requests: how many each client
// has (its places, as a device's session has them), and how to end them
// all when the drain runs out of time.
type localRequests struct {
	mu       sync.Mutex
	perUser  map[string]int
	cancels  map[int]context.CancelCauseFunc
	nextID   int
	inFlight int
}

// client is the holder of one client's places.
func (l *localRequests) client(name string) holder { return localClient{l, name} }

type localClient struct {
	l    *localRequests
	name string
}

func (c localClient) take(max int) bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perUser[c.name] >= max {
		return false
	}
	if l.perUser == nil {
		l.perUser = make(map[string]int)
	}
	l.perUser[c.name]++
	l.inFlight++
	return true
}

func (c localClient) give() {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perUser[c.name]--; l.perUser[c.name] <= 0 {
		delete(l.perUser, c.name)
	}
	l.inFlight--
}

func (l *localRequests) register(cancel context.CancelCauseFunc) (unregister func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancels == nil {
		l.cancels = make(map[int]context.CancelCauseFunc)
	}
	id := l.nextID
	l.nextID++
	l.cancels[id] = cancel
	return func() {
		l.mu.Lock()
		delete(l.cancels, id)
		l.mu.Unlock()
	}
}

func (l *localRequests) cancelAll(cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.cancels {
		c(cause)
	}
}

func (l *localRequests) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inFlight
}
