package ollama

import (
	"fmt"
	"strings"

	"github.com/mcpd-project/mcpd/backends"
)

// FailureKind classifies what went wrong with one attempt at an endpoint.
type FailureKind string

const (
	FailRefused      FailureKind = "refused"         // nothing listens, or the host is unreachable
	FailConnect      FailureKind = "connect-timeout" // the TCP connect took too long
	FailFirstToken   FailureKind = "first-token-timeout"
	FailStall        FailureKind = "stall"           // too long between two streamed lines
	FailCut          FailureKind = "cut"             // the stream ended without the final done object
	FailConnLost     FailureKind = "connection-lost" // closed or reset before any response (Engine restarting)
	FailModelMissing FailureKind = "model-missing"
	FailQueueFull    FailureKind = "queue-full" // 503: past OLLAMA_MAX_QUEUE
	FailServer       FailureKind = "server-error"
	FailRequest      FailureKind = "bad-request" // 4xx other than 404: our request is wrong
	FailNoTools      FailureKind = "no-tools"    // 400: the model cannot call tools
)

// Error is one failed attempt at an endpoint. It unwraps to the
// backends error it maps to (ErrUnavailable, ErrBusy, ErrFailed,
// ErrModelNotFound) and to the underlying cause.
type Error struct {
	Endpoint string
	Kind     FailureKind
	Status   int // HTTP status, when there was one
	Pieces   int // output pieces that reached the caller before it failed
	Err      error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ollama %s: %s", e.Endpoint, e.Kind)
	if e.Pieces > 0 {
		fmt.Fprintf(&b, " after %d pieces", e.Pieces)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() []error { return []error{e.sentinel(), e.Err} }

func (e *Error) sentinel() error {
	switch e.Kind {
	case FailModelMissing:
		return backends.ErrModelNotFound
	case FailQueueFull:
		return backends.ErrBusy
	case FailRefused, FailConnect, FailConnLost:
		return backends.ErrUnavailable
	case FailFirstToken:
		return backends.ErrUnavailable
	case FailNoTools:
		return backends.ErrUnsupported
	}
	return backends.ErrFailed
}

// retryable: may the request go again (here or elsewhere) when no output
// reached the caller?
func (e *Error) retryable() bool { return e.Kind != FailRequest && e.Kind != FailNoTools }

// countsAgainst: does this failure say the endpoint is unhealthy? A
// missing model, a full queue or a bad request come from a server that
// works.
func (e *Error) countsAgainst() bool {
	switch e.Kind {
	case FailModelMissing, FailQueueFull, FailRequest, FailNoTools:
		return false
	}
	return true
}
