// Package httpapi is mcpd's local HTTP endpoint: health and readiness
// probes, a JSON status, Prometheus metrics, and POST /v1/generate — a
// streaming NDJSON generation for applications on the same machine that
// goes through the daemon's own admission, queue and limits, exactly as a
// device's INFER does. It imports the daemon; the daemon never imports it.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/daemon/telemetry"
	"github.com/mcpd-project/mcpd/serialproto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where the endpoint listens unless configured otherwise:
// loopback only, since nothing on it is authenticated.
const DefaultAddr = "127.0.0.1:7701"

// maxBody bounds a /v1/generate request body; a prompt is at most the
// protocol's largest message, and JSON escaping may double it.
const maxBody = 2*serialproto.MaxMessageLimit + 4096

// maxDeadlineMS bounds deadline_ms before it becomes a time.Duration (a
// value near 2^63 ns would overflow); the daemon's request_timeout is
// shorter anyway.
const maxDeadlineMS = 24 * 60 * 60 * 1000

// Daemon is what the API serves: *daemon.Daemon.
type Daemon interface {
	Snapshot(ctx context.Context) daemon.Snapshot
	Generate(ctx context.Context, req daemon.LocalRequest, emit backends.Emit) (backends.Result, error)
}

// Config assembles a Server.
type Config struct {
	Daemon  Daemon
	Metrics *telemetry.Metrics        // nil: /metrics answers 404
	Backend telemetry.BackendReporter // nil: /status reports the daemon's backend name only
	Version string
	Log     *slog.Logger
	// ReadyNeedsLink makes /readyz answer 503 while no link is up (every
	// serial port missing or refused): for a gateway whose devices are all
	// on serial ports. Off, readiness is the engine's and the drain's.
	ReadyNeedsLink bool
	// AllowedHosts are host names, besides loopback ones, that requests
	// may name in Host (when the API is reached under another name, e.g.
	// through a reverse proxy); AllowedOrigins are browser origins
	// ("https://dash.example") besides loopback ones that may call it.
	AllowedHosts   []string
	AllowedOrigins []string
	MaxConns       int // open connections at once; 0: DefaultMaxConns
}

// Server is the HTTP API.
type Server struct {
	cfg     Config
	start   time.Time
	mux     *http.ServeMux
	handler http.Handler // the mux behind the guard (guard.go)
	refused atomic.Int64 // requests the guard refused
	history tokenHistory // the status page's tokens/s chart (page.go)
}

// New returns the API's server.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, start: time.Now(), mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /{$}", s.page) // the status page (page.go)
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /status", s.status)
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics.Registry(), promhttp.HandlerOpts{}))
	}
	s.mux.HandleFunc("POST /v1/generate", s.generate)
	// Ollama- and OpenAI-compatible endpoints (compat.go).
	s.mux.HandleFunc("POST /api/generate", s.ollamaGenerate)
	s.mux.HandleFunc("POST /api/chat", s.ollamaChat)
	s.mux.HandleFunc("GET /api/tags", s.ollamaTags)
	s.mux.HandleFunc("GET /api/version", s.ollamaVersion)
	s.mux.HandleFunc("POST /v1/chat/completions", s.openAIChat)
	s.mux.HandleFunc("GET /v1/models", s.openAIModels)
	for i, h := range s.cfg.AllowedHosts {
		s.cfg.AllowedHosts[i] = strings.ToLower(h)
	}
	s.handler = s.guard(s.mux)
	return s
}

// ServeHTTP makes Server an http.Handler: the guard's checks, then the
// endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Serve answers on ln until ctx is done, then gives requests in flight up
// to grace to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	s.warnOffLoopback(ln)
	maxConns := s.cfg.MaxConns
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	ln = newLimitListener(ln, maxConns)
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		// No overall WriteTimeout: a stream lasts as long as its request;
		// each write has its own deadline (writeTimeout, streamer).
		IdleTimeout:    idleTimeout,
		MaxHeaderBytes: maxHeaderBytes,
		BaseContext:    func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:       slog.NewLogLogger(s.cfg.Log.Handler(), slog.LevelDebug),
	}
	stopSampling := make(chan struct{})
	defer close(stopSampling)
	go s.sampleTokens(ctx, stopSampling)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("httpapi: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}

// healthz: the process answers. Liveness only: a busy or draining daemon
// is alive.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyz: 200 while the daemon takes requests, 503 with the state (and
// why) otherwise — starting, draining, engine unavailable, and with
// ReadyNeedsLink no link up. Each link that is down follows on its own line.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	snap := s.cfg.Daemon.Snapshot(r.Context())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	state, reason := snap.State, snap.StateReason
	if state == "ready" && s.cfg.ReadyNeedsLink && snap.LinksUp == 0 {
		state, reason = "no_link", "no link is up"
	}
	if state != "ready" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, state, reason)
	for _, l := range snap.LinkStates {
		if !l.Up {
			fmt.Fprintf(w, "link %s down: %s\n", l.Name, l.Error)
		}
	}
}

// Status is the /status document.
type Status struct {
	Version       string                 `json:"version"`
	UptimeSeconds float64                `json:"uptime_s"`
	Daemon        daemon.Snapshot        `json:"daemon"`
	Backend       *telemetry.BackendInfo `json:"backend,omitempty"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := Status{
		Version:       s.cfg.Version,
		UptimeSeconds: time.Since(s.start).Seconds(),
		Daemon:        s.cfg.Daemon.Snapshot(r.Context()),
	}
	if s.cfg.Backend != nil {
		b := s.cfg.Backend()
		st.Backend = &b
	}
	writeJSON(w, http.StatusOK, st)
}

// GenerateRequest is the body of POST /v1/generate.
type GenerateRequest struct {
	Prompt      string   `json:"prompt"`
	System      string   `json:"system,omitempty"`
	Model       string   `json:"model,omitempty"`
	MaxTokens   int      `json:"max_tokens,omitempty"`
	Temperature *float32 `json:"temperature,omitempty"` // absent: the engine's default; 0: greedy
	Seed        *uint32  `json:"seed,omitempty"`
	TopK        int      `json:"top_k,omitempty"`
	TopP        float32  `json:"top_p,omitempty"`
	DeadlineMS  int      `json:"deadline_ms,omitempty"`
	// Client is accepted for compatibility and ignored: the per-client
	// cap applies to the caller's address, which a caller cannot choose.
	Client string `json:"client,omitempty"`
}

// GenerateLine is one line of the NDJSON answer: text pieces, then one
// final line with Done (and the figures) or Error.
type GenerateLine struct {
	Response     string `json:"response,omitempty"`
	Done         bool   `json:"done,omitempty"`
	Stop         string `json:"stop,omitempty"`
	Tokens       int    `json:"tokens,omitempty"`
	PromptTokens int    `json:"prompt_tokens,omitempty"`
	TTFTMS       int64  `json:"ttft_ms,omitempty"`
	DurationMS   int64  `json:"duration_ms,omitempty"`
	Error        *Error `json:"error,omitempty"`
}

// Error is an error answer: the protocol's error code (what a device would
// have received) and a message.
type Error struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

func (s *Server) generate(w http.ResponseWriter, r *http.Request) {
	var req GenerateRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, serialproto.CodeMalformed, "request body: "+err.Error())
		return
	}
	if req.Prompt == "" {
		writeError(w, http.StatusBadRequest, serialproto.CodeMalformed, "prompt is empty")
		return
	}
	if req.MaxTokens < 0 || req.DeadlineMS < 0 || req.TopK < 0 || req.TopP < 0 {
		writeError(w, http.StatusBadRequest, serialproto.CodeMalformed, "max_tokens, deadline_ms, top_k and top_p must not be negative")
		return
	}
	client := clientOf(r)
	opts := backends.Options{MaxTokens: req.MaxTokens, TopK: req.TopK, TopP: req.TopP}
	if req.Temperature != nil {
		opts.Temperature, opts.TemperatureSet = *req.Temperature, true
	}
	if req.Seed != nil {
		opts.Seed, opts.SeedSet = *req.Seed, true
	}

	// The status line waits for the first piece, so an error before any
	// output gets its own HTTP status (BUSY: 503 or 429); once text has
	// gone out, a failure is the stream's last line.
	//
	// The engine's callback only queues a line (streamer, guard.go): a
	// client that stops reading fills the bounded buffer, and its request
	// is cancelled and its connection cut instead of holding the engine.
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	var st *streamer
	head := func() {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
	}
	begin := func() {
		if st == nil {
			head()
			st = newStreamer(w, cancel, writeTimeout)
		}
	}
	res, err := s.cfg.Daemon.Generate(ctx, daemon.LocalRequest{
		Client: client, Model: req.Model, System: req.System, Prompt: req.Prompt,
		Options: opts, Deadline: time.Duration(min(req.DeadlineMS, maxDeadlineMS)) * time.Millisecond,
	}, func(piece []byte) error {
		begin()
		line, err := json.Marshal(GenerateLine{Response: string(piece)})
		if err != nil {
			return err
		}
		return st.push(append(line, '\n'))
	})
	started := st != nil
	enc := json.NewEncoder(w)
	if started {
		if serr := st.close(); serr != nil {
			s.cfg.Log.Debug("stream cut", "client", client, "err", serr)
			// Cut the connection; the write deadline has passed, so the
			// server's last flush fails at once instead of waiting.
			panic(http.ErrAbortHandler)
		}
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout)) // the last line's
	if err != nil {
		code := serialproto.CodeBackendFailed
		var rerr *daemon.RequestError
		if errors.As(err, &rerr) {
			code = rerr.Code
		}
		if !started {
			status := httpStatus(code, err)
			if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			writeError(w, status, code, err.Error())
			return
		}
		_ = enc.Encode(GenerateLine{Error: &Error{Code: code.String(), Message: err.Error(), Retryable: code.Retryable()}})
		return
	}
	if !started {
		head()
	}
	_ = enc.Encode(GenerateLine{
		Done: true, Stop: stopName(res.Stop), Tokens: res.Tokens, PromptTokens: res.PromptTokens,
		TTFTMS: res.TTFT.Milliseconds(), DurationMS: res.Duration.Milliseconds(),
	})
}

// httpStatus maps a refusal or failure to its HTTP status. BUSY keeps the
// protocol's meaning — retry shortly — as 503 when the daemon's queue is
// full (everyone is waiting) and 429 when only this client is over its cap.
func httpStatus(code serialproto.ErrorCode, err error) int {
	switch code {
	case serialproto.CodeBusy:
		if errors.Is(err, daemon.ErrClientBusy) {
			return http.StatusTooManyRequests
		}
		return http.StatusServiceUnavailable
	case serialproto.CodeShuttingDown, serialproto.CodeBackendUnavailable:
		return http.StatusServiceUnavailable
	case serialproto.CodeTimeout:
		return http.StatusGatewayTimeout
	case serialproto.CodeModelNotFound:
		return http.StatusNotFound
	case serialproto.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case serialproto.CodeMalformed, serialproto.CodeUnsupportedOption:
		return http.StatusBadRequest
	case serialproto.CodeCancelled:
		return 499 // the client closed the request (nginx's convention); it reads nothing
	}
	return http.StatusBadGateway
}

func stopName(s backends.StopReason) string {
	switch s {
	case backends.StopLength:
		return "length"
	case backends.StopContext:
		return "context"
	case backends.StopString:
		return "stop"
	}
	return "eos"
}

// writeError answers with an error as one line of JSON (writeCompact):
// line-reading clients take every line for a whole object.
func writeError(w http.ResponseWriter, status int, code serialproto.ErrorCode, msg string) {
	writeCompact(w, status, GenerateLine{Error: &Error{Code: code.String(), Message: msg, Retryable: code.Retryable()}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ParseAddr reads the endpoint's configured address: "off" (or "")
// disables it; otherwise host:port.
func ParseAddr(s string) (addr string, enabled bool, err error) {
	if s == "" || s == "off" {
		return "", false, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", false, fmt.Errorf("httpapi: listen address %q: %w", s, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", false, fmt.Errorf("httpapi: listen address %q: bad port", s)
	}
	return net.JoinHostPort(host, port), true, nil
}
