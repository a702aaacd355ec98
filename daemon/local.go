package daemon

import (
	"context"
	"errors"
	"fmt"
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
	// ErrClientBusy: this client already has as many requests as one
	// device may have (MaxPerSession) — the device's ERROR BUSY "this
	// device has too many requests".
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
	// Client identifies the caller: the per-device request cap applies to
	// each client as to each device.
	Client string
	Model  string
	System string
	Prompt string
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
	first := time.Now()
	d.mu.Lock()
	running := d.linkCtx != nil && d.linkCtx.Err() == nil
	d.mu.Unlock()
	refuse := func(code serialproto.ErrorCode, err error) (backends.Result, error) {
		if code == serialproto.CodeBusy {
			d.stats.Busy.Add(1)
		}
		d.observeRefused(LocalLink, code)
		return backends.Result{}, &RequestError{Code: code, Err: err}
	}
	switch {
	case !running:
		return refuse(serialproto.CodeBackendUnavailable, ErrNotRunning)
	case d.draining.Load():
		return refuse(serialproto.CodeShuttingDown, errShuttingDown)
	case !d.local.reserve(req.Client, d.conf().MaxPerSession):
		return refuse(serialproto.CodeBusy, ErrClientBusy)
	}
	defer d.local.unreserve(req.Client)
	if !d.admit() {
		return refuse(serialproto.CodeBusy, ErrQueueFull)
	}
	if d.draining.Load() { // checked after admit, as for devices
		d.release()
		return refuse(serialproto.CodeShuttingDown, errShuttingDown)
	}
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

	res, err := d.generateLocal(ctx, req, obs, emit)
	d.release()
	var code serialproto.ErrorCode
	switch {
	case err == nil:
		d.stats.Done.Add(1)
	default:
		code = errorCode(err, context.Cause(ctx))
		if errors.Is(context.Cause(ctx), context.Canceled) {
			code = serialproto.CodeCancelled // the caller went away
		}
		if code == serialproto.CodeCancelled {
			d.stats.Canceled.Add(1)
		} else {
			d.stats.Failed.Add(1)
		}
		err = &RequestError{Code: code, Err: err}
	}
	if obs != nil {
		obs.Generated(res, err, code)
		obs.Delivered(err) // the pieces went out as they came: delivery ends with generation
	}
	return res, err
}

func (d *Daemon) generateLocal(ctx context.Context, req LocalRequest, obs RequestObserver, emit backends.Emit) (backends.Result, error) {
	slots := *d.slots.Load() // released to the pool it came from, even after a reload
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return backends.Result{}, context.Cause(ctx)
	}
	defer func() { <-slots }()
	e := d.acquireEngine()
	defer e.release()
	call := d.live.begin()
	defer d.live.end(call)
	if obs != nil {
		obs.Generating(e.b.Name())
	}
	msgs := make([]backends.Message, 0, 2)
	if req.System != "" {
		msgs = append(msgs, backends.Message{Role: backends.RoleSystem, Content: req.System})
	}
	msgs = append(msgs, backends.Message{Role: backends.RoleUser, Content: req.Prompt})
	opts := req.Options
	if opts.MaxTokens <= 0 {
		opts.MaxTokens = d.conf().DefaultMaxTokens
	}
	res, err := e.b.Generate(ctx, backends.Request{Model: req.Model, Messages: msgs, Options: opts}, func(piece []byte) error {
		call.step()
		if obs != nil {
			obs.Token(len(piece))
		}
		return emit(piece)
	})
	if err == nil && ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	return res, err
}

// localRequests tracks local applications' requests: how many each client
// has, and how to end them all when the drain runs out of time.
type localRequests struct {
	mu       sync.Mutex
	perUser  map[string]int
	cancels  map[int]context.CancelCauseFunc
	nextID   int
	inFlight int
}

func (l *localRequests) reserve(client string, max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perUser[client] >= max {
		return false
	}
	if l.perUser == nil {
		l.perUser = make(map[string]int)
	}
	l.perUser[client]++
	l.inFlight++
	return true
}

func (l *localRequests) unreserve(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perUser[client]--; l.perUser[client] <= 0 {
		delete(l.perUser, client)
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
