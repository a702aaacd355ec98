package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
)

// testEngine is a deterministic engine for tests: it answers with the words
// of "echo: " + the last user message, one word per token, optionally with
// a delay per token, failing after failAfter tokens, blocking until release
// is closed, or paced token by token by the test. It records every request
// it saw.
type testEngine struct {
	delay        time.Duration
	failAfter    int           // 0: never fail
	release      chan struct{} // non-nil: block before the first token until closed
	hold         chan struct{} // non-nil: block after the first token until closed
	pace         chan struct{} // non-nil: after each token, send on it, then wait to receive from it
	contextWords int           // >0: a prompt of more words fails with ErrPromptTooLong, before any token
	contextTotal int           // >0: a conversation (all messages) of more words fails so too
	calls        atomic.Int64
	cancelled    atomic.Int64

	mu   sync.Mutex
	seen []backends.Request
}

func answerFor(prompt string) string { return "echo: " + prompt }

func (e *testEngine) Name() string { return "test-engine" }

func (e *testEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	e.calls.Add(1)
	e.mu.Lock()
	e.seen = append(e.seen, req)
	e.mu.Unlock()
	start := time.Now()
	if n := len(strings.Fields(req.Messages[len(req.Messages)-1].Content)); e.contextWords > 0 && n > e.contextWords {
		return backends.Result{}, fmt.Errorf("%w: %d words, context %d", backends.ErrPromptTooLong, n, e.contextWords)
	}
	if e.contextTotal > 0 {
		n := 0
		for _, m := range req.Messages {
			n += len(strings.Fields(m.Content))
		}
		if n > e.contextTotal {
			return backends.Result{}, fmt.Errorf("%w: %d words, context %d", backends.ErrPromptTooLong, n, e.contextTotal)
		}
	}
	if e.release != nil {
		select {
		case <-e.release:
		case <-ctx.Done():
			e.cancelled.Add(1)
			return backends.Result{}, ctx.Err()
		}
	}
	words := strings.SplitAfter(answerFor(req.Messages[len(req.Messages)-1].Content), " ")
	var res backends.Result
	for i, w := range words {
		if req.Options.MaxTokens > 0 && i >= req.Options.MaxTokens {
			res.Stop = backends.StopLength
			break
		}
		if e.failAfter > 0 && i == e.failAfter {
			return res, fmt.Errorf("%w: simulated engine crash", backends.ErrFailed)
		}
		if e.delay > 0 {
			select {
			case <-time.After(e.delay):
			case <-ctx.Done():
				e.cancelled.Add(1)
				return res, ctx.Err()
			}
		}
		if ctx.Err() != nil {
			e.cancelled.Add(1)
			return res, ctx.Err()
		}
		if err := emit([]byte(w)); err != nil {
			return res, err
		}
		res.Generated = append(res.Generated, int32(1000+i)) // ids the daemon must keep with the answer
		if e.pace != nil {
			select { // the test sees the token out…
			case e.pace <- struct{}{}:
			case <-ctx.Done():
				e.cancelled.Add(1)
				return res, ctx.Err()
			}
			select { // …and lets the next one come
			case <-e.pace:
			case <-ctx.Done():
				e.cancelled.Add(1)
				return res, ctx.Err()
			}
		}
		if i == 0 {
			res.TTFT = time.Since(start)
			if e.hold != nil {
				select {
				case <-e.hold:
				case <-ctx.Done():
					e.cancelled.Add(1)
					return res, ctx.Err()
				}
			}
		}
		res.Tokens++
	}
	res.PromptTokens = len(strings.Fields(req.Messages[len(req.Messages)-1].Content))
	res.Duration = time.Since(start)
	return res, nil
}

func (e *testEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "echo-model"}, nil
}
func (e *testEngine) Healthy(context.Context) error { return nil }
func (e *testEngine) Close() error                  { return nil }

func (e *testEngine) requests() []backends.Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]backends.Request(nil), e.seen...)
}
