package ollama

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/internal/ollamatest"
)

func newOllama(t testing.TB, cfg Config, servers ...*ollamatest.Server) *Engine {
	t.Helper()
	for _, s := range servers {
		cfg.Endpoints = append(cfg.Endpoints, s.URL())
	}
	if cfg.Model == "" {
		cfg.Model = "tiny"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	o, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func chatReq(prompt string) backends.Request {
	return backends.Request{Messages: []backends.Message{{Role: backends.RoleUser, Content: prompt}}}
}

// collect runs Generate and returns the pieces it emitted.
func collectPieces(ctx context.Context, b backends.Backend, req backends.Request) ([]string, backends.Result, error) {
	var pieces []string
	res, err := b.Generate(ctx, req, func(p []byte) error {
		pieces = append(pieces, string(p))
		return nil
	})
	return pieces, res, err
}

func TestOllamaStreamsChat(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	keep := -1 * time.Second
	o := newOllama(t, Config{KeepAlive: &keep}, srv)
	req := backends.Request{
		Messages: []backends.Message{{Role: backends.RoleSystem, Content: "be brief"}, {Role: backends.RoleUser, Content: "hi"}, {Role: backends.RoleAssistant, Content: "hello"}, {Role: backends.RoleUser, Content: "how warm is it?"}},
		Options: backends.Options{MaxTokens: 17, Temperature: 0, TemperatureSet: true, Seed: 42, SeedSet: true,
			ContextSize: 512, TopK: 5, Stop: []string{"\n"}},
	}
	pieces, res, err := collectPieces(context.Background(), o, req)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(pieces, "|"), strings.Join(ollamatest.DefaultTokens, "|"); got != want {
		t.Fatalf("pieces %q, want %q", got, want)
	}
	if res.Tokens != len(ollamatest.DefaultTokens) || res.PromptTokens != 12 || res.Stop != backends.StopEOS || res.TTFT <= 0 || res.Duration < res.TTFT {
		t.Fatalf("result %+v", res)
	}
	reqs := srv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	if r.Model != "tiny" || len(r.Messages) != 4 || r.Messages[3].Content != "how warm is it?" || r.Messages[0].Role != "system" {
		t.Fatalf("request %+v", r)
	}
	if r.Stream == nil || !*r.Stream || r.KeepAlive == nil || r.KeepAlive.Duration < 1<<62 {
		// A negative keep_alive is "forever"; Ollama's type reads it as the longest duration.
		t.Fatalf("stream %v keep_alive %v", r.Stream, r.KeepAlive)
	}
	want := map[string]float64{"num_predict": 17, "temperature": 0, "seed": 42, "num_ctx": 512, "top_k": 5}
	for k, v := range want {
		if got, ok := r.Options[k].(float64); !ok || got != v {
			t.Errorf("option %s = %v, want %v", k, r.Options[k], v)
		}
	}
	if stop, ok := r.Options["stop"].([]any); !ok || len(stop) != 1 || stop[0] != "\n" {
		t.Errorf("stop = %v", r.Options["stop"])
	}
	info, err := o.Model(context.Background(), "")
	if err != nil || info.Name != "tiny" || info.ContextLength != 2048 || info.Quantization != "Q8_0" {
		t.Fatalf("model %+v, %v", info, err)
	}
}

func TestOllamaReusesConnections(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	o := newOllama(t, Config{}, srv)
	before := srv.Connections() // the start-up probe's
	for i := range 20 {
		if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); err != nil {
			t.Fatal(i, err)
		}
	}
	// Go's transport returns a connection to its idle pool on its own
	// goroutine after the body's EOF, so the next request may rarely dial
	// anew (seen under load): without keep-alive it would be 20.
	if got := srv.Connections() - before; got > 2 {
		t.Fatalf("20 sequential requests opened %d connections; want at most 2 (kept alive)", got)
	}
	// Concurrent requests open at most one connection each, and a second
	// burst reuses them.
	burst := func() {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	burst()
	after := srv.Connections()
	burst()
	if n := srv.Connections() - after; n > 1 { // without reuse: 4 (see above for the 1)
		t.Fatalf("a second burst opened %d new connections; want at most 1", n)
	}
	if after-before > 4 {
		t.Fatalf("4 concurrent requests opened %d connections", after-before)
	}
}

func TestOllamaFaults(t *testing.T) {
	quick := Config{Retries: -1, FirstTokenTimeout: 300 * time.Millisecond, TokenTimeout: 300 * time.Millisecond}
	tests := []struct {
		name   string
		fault  ollamatest.Fault
		model  string
		stop   bool // the server is stopped: connections are refused
		want   error
		kind   FailureKind
		pieces int
	}{
		{name: "500", fault: ollamatest.InternalError, want: backends.ErrFailed, kind: FailServer},
		{name: "503 queue full", fault: ollamatest.QueueFull, want: backends.ErrBusy, kind: FailQueueFull},
		{name: "stall before first token", fault: ollamatest.StallBeforeFirst, want: backends.ErrUnavailable, kind: FailFirstToken},
		{name: "stall mid-stream", fault: ollamatest.StallMidStream, want: backends.ErrFailed, kind: FailStall, pieces: 2},
		{name: "cut mid-stream", fault: ollamatest.CutMidStream, want: backends.ErrFailed, kind: FailCut, pieces: 2},
		{name: "error line mid-stream", fault: ollamatest.ErrorMidStream, want: backends.ErrFailed, kind: FailCut, pieces: 2},
		{name: "connection reset", fault: ollamatest.ResetConnection, want: backends.ErrUnavailable, kind: FailConnLost},
		{name: "model missing", model: "nope:7b", want: backends.ErrModelNotFound, kind: FailModelMissing},
		{name: "refused", stop: true, want: backends.ErrUnavailable, kind: FailRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ollamatest.Start(t, ollamatest.Config{})
			if tt.stop {
				srv.Stop()
			}
			o := newOllama(t, quick, srv)
			srv.SetFault(tt.fault)
			req := chatReq("hi")
			req.Model = tt.model
			pieces, _, err := collectPieces(context.Background(), o, req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			var oe *Error
			if !errors.As(err, &oe) || oe.Kind != tt.kind {
				t.Fatalf("err %v (%T), want kind %s", err, err, tt.kind)
			}
			if len(pieces) != tt.pieces || oe.Pieces != tt.pieces {
				t.Fatalf("%d pieces (error says %d), want %d", len(pieces), oe.Pieces, tt.pieces)
			}
			if tt.model != "" && !strings.Contains(err.Error(), tt.model) {
				t.Fatalf("error %q does not name the model", err)
			}
		})
	}
}

func TestOllamaSlowTokensAreNotAStall(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{TokenDelay: 60 * time.Millisecond, FirstTokenDelay: 150 * time.Millisecond})
	o := newOllama(t, Config{Retries: -1, FirstTokenTimeout: 2 * time.Second, TokenTimeout: 1 * time.Second}, srv)
	pieces, res, err := collectPieces(context.Background(), o, chatReq("hi"))
	if err != nil || len(pieces) != len(ollamatest.DefaultTokens) {
		t.Fatalf("%d pieces, %v", len(pieces), err)
	}
	if res.TTFT < 150*time.Millisecond {
		t.Fatalf("TTFT %v, below the server's first-token delay", res.TTFT)
	}
}

func TestOllamaTotalTimeoutAndCallerContext(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{TokenDelay: 100 * time.Millisecond})
	o := newOllama(t, Config{TotalTimeout: 250 * time.Millisecond}, srv)
	pieces, _, err := collectPieces(context.Background(), o, chatReq("hi"))
	if !errors.Is(err, context.DeadlineExceeded) || len(pieces) == 0 || len(pieces) == len(ollamatest.DefaultTokens) {
		t.Fatalf("%d pieces, err %v; want some pieces and DeadlineExceeded", len(pieces), err)
	}
	// The caller's cancellation is no fault of the endpoint.
	o2 := newOllama(t, Config{BreakerFailures: 1}, srv)
	ctx, cancel := context.WithCancel(context.Background())
	_, err = o2.Generate(ctx, chatReq("hi"), func([]byte) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if st := o2.Endpoints()[0]; st.Breaker != "closed" || st.Failures != 0 {
		t.Fatalf("a cancelled request counted against the endpoint: %+v", st)
	}
	// An emit error ends the request with that error, no retry.
	before := srv.Chats()
	boom := errors.New("device gone")
	_, err = o2.Generate(context.Background(), chatReq("hi"), func([]byte) error { return boom })
	if !errors.Is(err, boom) || srv.Chats() != before+1 {
		t.Fatalf("err %v, %d chats", err, srv.Chats()-before)
	}
}

func TestOllamaRetriesOnlyBeforeFirstToken(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	o := newOllama(t, Config{Retries: 2, RetryBackoff: 5 * time.Millisecond, FirstTokenTimeout: 300 * time.Millisecond,
		BreakerFailures: 10}, srv)

	srv.FailNext(ollamatest.InternalError, ollamatest.StallBeforeFirst)
	pieces, _, err := collectPieces(context.Background(), o, chatReq("hi"))
	if err != nil || strings.Join(pieces, "") != strings.Join(ollamatest.DefaultTokens, "") {
		t.Fatalf("pieces %q, err %v: two failures before the first token must be retried away", pieces, err)
	}
	if srv.Chats() != 3 {
		t.Fatalf("%d chats, want 3", srv.Chats())
	}

	srv.FailNext(ollamatest.InternalError, ollamatest.InternalError, ollamatest.InternalError)
	_, _, err = collectPieces(context.Background(), o, chatReq("hi"))
	if !errors.Is(err, backends.ErrFailed) || srv.Chats() != 6 {
		t.Fatalf("err %v after %d chats; want backends.ErrFailed after 1+2 attempts", err, srv.Chats()-3)
	}

	// After output reached the caller, nothing is retried: the tokens
	// already emitted would be duplicated.
	srv.FailNext(ollamatest.CutMidStream)
	pieces, _, err = collectPieces(context.Background(), o, chatReq("hi"))
	if !errors.Is(err, backends.ErrFailed) || len(pieces) != 2 || srv.Chats() != 7 {
		t.Fatalf("pieces %q, err %v, %d chats", pieces, err, srv.Chats()-6)
	}
}

func TestOllamaFailsOverAndRoutesByLoad(t *testing.T) {
	a := ollamatest.Start(t, ollamatest.Config{})
	b := ollamatest.Start(t, ollamatest.Config{})
	o := newOllama(t, Config{Retries: 1, RetryBackoff: time.Millisecond}, a, b)
	a.Stop()
	for range 3 {
		pieces, _, err := collectPieces(context.Background(), o, chatReq("hi"))
		if err != nil || len(pieces) != len(ollamatest.DefaultTokens) {
			t.Fatalf("%d pieces, %v", len(pieces), err)
		}
	}
	if b.Chats() != 3 {
		t.Fatalf("b answered %d", b.Chats())
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	// Model missing on one endpoint: the other answers.
	a.RemoveModel("tiny")
	// Two slow requests at once go to different endpoints (fewest in
	// flight), once both are healthy.
	c := ollamatest.Start(t, ollamatest.Config{TokenDelay: 40 * time.Millisecond})
	d := ollamatest.Start(t, ollamatest.Config{TokenDelay: 40 * time.Millisecond})
	o2 := newOllama(t, Config{}, c, d)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, _, err := collectPieces(context.Background(), o2, chatReq("hi")); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if c.Chats() != 2 || d.Chats() != 2 {
		t.Fatalf("chats %d and %d; want 2 and 2", c.Chats(), d.Chats())
	}
	pieces, _, err := collectPieces(context.Background(), o, backends.Request{Messages: chatReq("x").Messages})
	if err != nil || len(pieces) == 0 {
		t.Fatalf("with the model only on b: %v", err)
	}
}

func TestOllamaBreakerOpensAndHalfOpens(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	changes := make(chan struct{}, 64)
	o := newOllama(t, Config{Retries: -1, BreakerFailures: 2, BreakerCooldown: 300 * time.Millisecond,
		ProbeInterval: time.Hour, OnHealthChange: func() { changes <- struct{}{} }}, srv)
	srv.SetFault(ollamatest.InternalError)
	for range 2 {
		if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); !errors.Is(err, backends.ErrFailed) {
			t.Fatal(err)
		}
	}
	st := o.Endpoints()[0]
	if st.Breaker != "open" || st.Opened != 1 {
		t.Fatalf("after 2 failures: %+v", st)
	}
	if err := o.Healthy(context.Background()); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("healthy with the breaker open: %v", err)
	}
	chats := srv.Chats()
	if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); !errors.Is(err, backends.ErrUnavailable) || srv.Chats() != chats {
		t.Fatalf("open breaker: err %v, %d requests reached the server", err, srv.Chats()-chats)
	}
	// Still failing after the cool-down: the probe (or a request) is the
	// half-open trial, and it reopens the breaker.
	srv.Stop()
	waitFor(t, 3*time.Second, func() bool { return o.Endpoints()[0].Opened == 2 })
	// Healed: the next trial closes it.
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	srv.SetFault(ollamatest.None)
	waitFor(t, 5*time.Second, func() bool { return o.Endpoints()[0].Breaker == "closed" })
	if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); err != nil {
		t.Fatal(err)
	}
	if len(changes) < 4 { // closed→open, open→half-open, half-open→open, …→closed
		t.Fatalf("%d health changes reported", len(changes))
	}
}

func TestOllamaModelCheckedAtStart(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{})
	_, err := New(context.Background(), Config{Endpoints: []string{srv.URL()}, Model: "llama3.2:1b",
		Logger: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, backends.ErrModelNotFound) || !strings.Contains(err.Error(), `"llama3.2:1b"`) || !strings.Contains(err.Error(), srv.URL()) {
		t.Fatalf("err %v; want backends.ErrModelNotFound naming the model and the endpoint", err)
	}
	// "tiny" is "tiny:latest".
	newOllama(t, Config{Model: "tiny:latest"}, srv)

	// Nothing reachable: the start succeeds, the engine is unhealthy until
	// Ollama comes up and the probe finds the model.
	down := ollamatest.Start(t, ollamatest.Config{})
	down.Stop()
	o := newOllama(t, Config{ProbeInterval: 50 * time.Millisecond, BreakerCooldown: 50 * time.Millisecond}, down)
	if err := o.Healthy(context.Background()); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("healthy while unreachable: %v", err)
	}
	if err := down.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return o.Healthy(context.Background()) == nil })
	if p := o.Endpoints()[0].Presence; p != "present" {
		t.Fatalf("presence %s", p)
	}
	// The model removed later: the probe notices, Healthy names it.
	down.RemoveModel("tiny")
	waitFor(t, 5*time.Second, func() bool { return errors.Is(o.Healthy(context.Background()), backends.ErrModelNotFound) })
	if err := o.Healthy(context.Background()); !strings.Contains(err.Error(), `"tiny"`) {
		t.Fatalf("err %v", err)
	}
}

func TestOllamaReportsVRAM(t *testing.T) {
	srv := ollamatest.Start(t, ollamatest.Config{Models: []ollamatest.Model{{Name: "tiny", Size: 100, SizeVRAM: 100, ContextLength: 2048}}})
	o := newOllama(t, Config{ProbeInterval: 50 * time.Millisecond}, srv)
	if o.ModelOnGPU() {
		t.Fatal("on GPU before anything loaded it")
	}
	if _, _, err := collectPieces(context.Background(), o, chatReq("hi")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, o.ModelOnGPU)
	if st := o.Endpoints()[0]; st.SizeVRAM != 100 || st.Size != 100 {
		t.Fatalf("%+v", st)
	}
}

func TestBreakerTransitions(t *testing.T) {
	var got []string
	b := newBreaker(3, time.Second, func(from, to BreakerState) { got = append(got, from.String()+">"+to.String()) })
	t0 := time.Unix(1000, 0)
	steps := []struct {
		do    func()
		state BreakerState
	}{
		{func() { b.failure(t0) }, BreakerClosed},
		{func() { b.success() }, BreakerClosed}, // resets the count
		{func() { b.failure(t0); b.failure(t0) }, BreakerClosed},
		{func() { b.failure(t0) }, BreakerOpen},
		{func() {
			if b.allow(t0.Add(999 * time.Millisecond)) {
				t.Error("allowed while cooling down")
			}
		}, BreakerOpen},
		{func() {
			if !b.allow(t0.Add(time.Second)) {
				t.Error("no trial after the cool-down")
			}
			if b.allow(t0.Add(time.Second)) {
				t.Error("a second trial while the first is out")
			}
		}, BreakerHalfOpen},
		{func() { b.failure(t0.Add(time.Second)) }, BreakerOpen},
		{func() {
			// Reopened from half-open: the cool-down doubled.
			if b.allow(t0.Add(2900 * time.Millisecond)) {
				t.Error("allowed before the doubled cool-down")
			}
			if !b.allow(t0.Add(3 * time.Second)) {
				t.Error("no trial after the doubled cool-down")
			}
		}, BreakerHalfOpen},
		{func() { b.release() }, BreakerHalfOpen},
		{func() {
			if !b.allow(t0.Add(3 * time.Second)) {
				t.Error("a released trial is not handed out again")
			}
			b.success()
		}, BreakerClosed},
	}
	for i, s := range steps {
		s.do()
		if st, _, _ := b.snapshot(); st != s.state {
			t.Fatalf("step %d: %s, want %s", i, st, s.state)
		}
	}
	want := "closed>open open>half-open half-open>open open>half-open half-open>closed"
	if strings.Join(got, " ") != want {
		t.Fatalf("transitions %q, want %q", strings.Join(got, " "), want)
	}
}

func waitFor(t testing.TB, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOllamaCapacity(t *testing.T) {
	a, b := ollamatest.Start(t, ollamatest.Config{}), ollamatest.Start(t, ollamatest.Config{})
	o := newOllama(t, Config{}, a, b)
	if got := o.Capacity(); got != 2*DefaultParallel {
		t.Fatalf("capacity %d, want %d", got, 2*DefaultParallel)
	}
	o2 := newOllama(t, Config{Parallel: 2, EndpointParallel: map[string]int{b.URL(): 8}}, a, b)
	if got := o2.Capacity(); got != 10 {
		t.Fatalf("capacity %d, want 2 + 8", got)
	}
	eps := o2.Endpoints()
	if len(eps) != 2 || eps[0].Parallel != 2 || eps[1].Parallel != 8 {
		t.Fatalf("endpoints %+v", eps)
	}
}

// TestOllamaFormatCarriesSchema: a constrained answer reaches Ollama as
// `format` with the JSON Schema, byte for byte; a request without one sends
// no format; a GBNF grammar alone is refused before any request.
func TestOllamaFormatCarriesSchema(t *testing.T) {
	const schema = `{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3}}}`
	srv := ollamatest.Start(t, ollamatest.Config{Tokens: []string{`{"fan":`, `2}`}})
	o := newOllama(t, Config{}, srv)
	req := chatReq("fan?")
	req.Options.Grammar, req.Options.Schema = `root ::= "x"`, []byte(schema)
	pieces, _, err := collectPieces(context.Background(), o, req)
	if err != nil || strings.Join(pieces, "") != `{"fan":2}` {
		t.Fatalf("pieces %q, %v", pieces, err)
	}
	if _, _, err := collectPieces(context.Background(), o, chatReq("plain")); err != nil {
		t.Fatal(err)
	}
	grammarOnly := chatReq("gbnf")
	grammarOnly.Options.Grammar = `root ::= "x"`
	if _, _, err := collectPieces(context.Background(), o, grammarOnly); !errors.Is(err, backends.ErrUnsupported) {
		t.Fatalf("grammar without schema: %v, want ErrUnsupported", err)
	}
	reqs := srv.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests reached Ollama, want 2", len(reqs))
	}
	if got := string(reqs[0].Format); got != schema {
		t.Errorf("format %s, want %s", got, schema)
	}
	if reqs[1].Format != nil {
		t.Errorf("unconstrained request carries format %s", reqs[1].Format)
	}
}
