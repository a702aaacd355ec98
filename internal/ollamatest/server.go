// Package ollamatest is an HTTP server that speaks Ollama's REST API the way
// Ollama v0.17 does — the same paths, NDJSON streaming with a final done
// object carrying eval counts, the same status codes and error bodies — and
// that fails on demand: refused connections, 500, 503 queue full, a stall
// before the first token or in the middle of the stream, a stream cut
// without its done object, slow tokens, a missing model.
//
// No Ollama server can be built on the machines that run mcpd's tests, so
// the Ollama backend, the fault tests and the benchmarks run against this.
// It listens on 127.0.0.1 only.
package ollamatest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ollama/ollama/api"
)

// Fault is how the server misbehaves on /api/chat and /api/generate.
type Fault int

const (
	// None: answer normally.
	None Fault = iota
	// InternalError: 500 {"error":"..."} before any output, as Ollama
	// answers a runner that crashed while loading.
	InternalError
	// QueueFull: 503 {"error":"server busy, please try again.  maximum
	// pending requests exceeded"}, Ollama's answer past OLLAMA_MAX_QUEUE.
	QueueFull
	// StallBeforeFirst: headers are sent, then nothing until the client
	// gives up (or Release is called).
	StallBeforeFirst
	// StallMidStream: CutAfter tokens, then nothing until the client gives
	// up (or Release is called).
	StallMidStream
	// CutMidStream: CutAfter tokens, then the connection is closed without
	// the final done object.
	CutMidStream
	// ErrorMidStream: CutAfter tokens, then an {"error":"..."} line, as
	// Ollama streams a runner failure after output started.
	ErrorMidStream
	// ResetConnection: the request is read, then the TCP connection is
	// reset without any response.
	ResetConnection
)

func (f Fault) String() string {
	switch f {
	case None:
		return "none"
	case InternalError:
		return "500"
	case QueueFull:
		return "503"
	case StallBeforeFirst:
		return "stall-before-first-token"
	case StallMidStream:
		return "stall-mid-stream"
	case CutMidStream:
		return "cut-mid-stream"
	case ErrorMidStream:
		return "error-mid-stream"
	case ResetConnection:
		return "reset"
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

// Model is a model the server holds.
type Model struct {
	Name          string // "tiny" is also found as "tiny:latest"
	Size          int64  // bytes, reported by /api/tags and /api/ps
	ContextLength int
	Parameters    int64
	Quantization  string
	// SizeVRAM is what /api/ps reports once the model is loaded: equal to
	// Size when it sits wholly on a GPU, 0 on CPU.
	SizeVRAM int64
}

// Config sets up a Server. The zero value serves model "tiny" with a fixed
// eight-token answer and no delay.
type Config struct {
	Models []Model
	// Tokens is the answer, one NDJSON line per piece (default: eight
	// pieces of "Hello from the fake Ollama.").
	Tokens []string
	// TokenDelay paces the pieces (the "slow tokens" fault is a large one).
	TokenDelay time.Duration
	// FirstTokenDelay is extra time before the first piece (a model load).
	FirstTokenDelay time.Duration
	// CutAfter is how many pieces the mid-stream faults send first
	// (default 2).
	CutAfter int
}

// DefaultTokens is the answer of a server whose Config.Tokens is empty.
var DefaultTokens = []string{"Hello", " from", " the", " fake", " Oll", "ama", ".", " ✓"}

// Server is a fake Ollama. Its methods are safe for concurrent use.
type Server struct {
	addr string
	mux  *http.ServeMux

	mu         sync.Mutex
	cfg        Config
	models     map[string]Model
	loaded     map[string]bool // models a chat has touched: /api/ps lists them
	faults     []Fault         // one per coming chat request, then fault
	fault      Fault
	listener   net.Listener
	httpServer *http.Server
	requests   []api.ChatRequest
	release    chan struct{} // closed by Release: stalled handlers return

	hits     sync.Map     // path → *atomic.Int64
	conns    atomic.Int64 // TCP connections accepted
	chats    atomic.Int64 // /api/chat and /api/generate requests received
	inFlight atomic.Int64
}

// New starts a server on 127.0.0.1 on a free port.
func New(cfg Config) (*Server, error) {
	s := &Server{models: map[string]Model{}, loaded: map[string]bool{}, release: make(chan struct{})}
	s.cfg = cfg
	if len(s.cfg.Models) == 0 {
		s.cfg.Models = []Model{{Name: "tiny", Size: 40 << 20, ContextLength: 2048, Parameters: 1_700_000, Quantization: "Q8_0"}}
	}
	if len(s.cfg.Tokens) == 0 {
		s.cfg.Tokens = DefaultTokens
	}
	if s.cfg.CutAfter == 0 {
		s.cfg.CutAfter = 2
	}
	for _, m := range s.cfg.Models {
		s.models[canonical(m.Name)] = m
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /{$}", s.root)
	s.mux.HandleFunc("HEAD /{$}", s.root)
	s.mux.HandleFunc("GET /api/version", s.version)
	s.mux.HandleFunc("GET /api/tags", s.tags)
	s.mux.HandleFunc("GET /api/ps", s.ps)
	s.mux.HandleFunc("POST /api/show", s.show)
	s.mux.HandleFunc("POST /api/chat", s.chat)
	s.mux.HandleFunc("POST /api/generate", s.generate)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

// countingListener counts accepted connections: the proof that a client
// reuses them.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func (s *Server) serve(ln net.Listener) {
	count := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := s.hits.LoadOrStore(r.URL.Path, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		s.mux.ServeHTTP(w, r)
	})
	hs := &http.Server{Handler: count, ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.listener, s.httpServer = ln, hs
	s.mu.Unlock()
	go func() { _ = hs.Serve(countingListener{ln, &s.conns}) }()
}

// URL is the server's base URL, e.g. http://127.0.0.1:41234.
func (s *Server) URL() string { return "http://" + s.addr }

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Stop closes the listener and every connection: clients now get
// "connection refused" on this address until Start.
func (s *Server) Stop() {
	s.mu.Lock()
	hs := s.httpServer
	s.httpServer, s.listener = nil, nil
	s.mu.Unlock()
	if hs != nil {
		s.Release()
		_ = hs.Close()
	}
}

// Start listens again on the same address after Stop.
func (s *Server) Start() error {
	s.mu.Lock()
	running := s.httpServer != nil
	s.release = make(chan struct{})
	s.mu.Unlock()
	if running {
		return nil
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.serve(ln)
	return nil
}

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// SetFault makes every coming chat request fail with f (None heals).
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	s.fault, s.faults = f, nil
	s.mu.Unlock()
}

// FailNext makes the next len(fs) chat requests fail with fs in order;
// after them the server behaves as SetFault last said.
func (s *Server) FailNext(fs ...Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, fs...)
	s.mu.Unlock()
}

// SetTokenDelay changes the pacing of the pieces.
func (s *Server) SetTokenDelay(d time.Duration) {
	s.mu.Lock()
	s.cfg.TokenDelay = d
	s.mu.Unlock()
}

// AddModel makes a model available (a pull finished); RemoveModel the
// opposite.
func (s *Server) AddModel(m Model) {
	s.mu.Lock()
	s.models[canonical(m.Name)] = m
	s.mu.Unlock()
}

// RemoveModel deletes a model.
func (s *Server) RemoveModel(name string) {
	s.mu.Lock()
	delete(s.models, canonical(name))
	delete(s.loaded, canonical(name))
	s.mu.Unlock()
}

// Release ends every stalled handler now (they return without writing).
func (s *Server) Release() {
	s.mu.Lock()
	select {
	case <-s.release:
	default:
		close(s.release)
	}
	s.mu.Unlock()
}

// Connections is the number of TCP connections accepted so far.
func (s *Server) Connections() int64 { return s.conns.Load() }

// Hits is the number of requests received for path, e.g. "/api/show".
func (s *Server) Hits(path string) int64 {
	if n, ok := s.hits.Load(path); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

// Chats is the number of chat and generate requests received so far.
func (s *Server) Chats() int64 { return s.chats.Load() }

// InFlight is the number of chat and generate requests being answered.
func (s *Server) InFlight() int64 { return s.inFlight.Load() }

// Requests returns the chat requests received so far, in order.
func (s *Server) Requests() []api.ChatRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]api.ChatRequest(nil), s.requests...)
}

// canonical adds Ollama's default tag: "tiny" and "tiny:latest" are one.
func canonical(name string) string {
	if name != "" && !strings.Contains(name, ":") {
		return name + ":latest"
	}
	return name
}

func (s *Server) model(name string) (Model, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.models[canonical(name)]
	return m, ok
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (s *Server) root(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte("Ollama is running"))
	}
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"version": "0.17.4"})
}

func (s *Server) tags(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	resp := api.ListResponse{Models: []api.ListModelResponse{}}
	for name, m := range s.models {
		resp.Models = append(resp.Models, api.ListModelResponse{Name: name, Model: name, Size: m.Size,
			ModifiedAt: time.Unix(1_700_000_000, 0).UTC(), Digest: fmt.Sprintf("%064x", len(name)),
			Details: api.ModelDetails{Format: "gguf", Family: "llama", QuantizationLevel: m.Quantization}})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) ps(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	resp := api.ProcessResponse{Models: []api.ProcessModelResponse{}}
	for name := range s.loaded {
		m := s.models[name]
		resp.Models = append(resp.Models, api.ProcessModelResponse{Name: name, Model: name, Size: m.Size,
			SizeVRAM: m.SizeVRAM, ContextLength: m.ContextLength, ExpiresAt: time.Now().Add(5 * time.Minute).UTC(),
			Details: api.ModelDetails{Format: "gguf", Family: "llama", QuantizationLevel: m.Quantization}})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) show(w http.ResponseWriter, r *http.Request) {
	var req api.ShowRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	name := req.Model
	if name == "" {
		name = req.Name //nolint:staticcheck // older clients send name
	}
	m, ok := s.model(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
		return
	}
	writeJSON(w, http.StatusOK, api.ShowResponse{
		Details: api.ModelDetails{Format: "gguf", Family: "llama", ParameterSize: fmt.Sprint(m.Parameters), QuantizationLevel: m.Quantization},
		ModelInfo: map[string]any{
			"general.architecture":    "llama",
			"general.parameter_count": m.Parameters,
			"llama.context_length":    m.ContextLength,
		},
	})
}

// nextFault takes the fault for one chat request.
func (s *Server) nextFault() (Fault, Config, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if len(s.faults) > 0 {
		f, s.faults = s.faults[0], s.faults[1:]
	}
	return f, s.cfg, s.release
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var req api.ChatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	s.answer(w, r, req.Model, req.Stream, func(piece string, final *api.Metrics, reason string) any {
		resp := api.ChatResponse{Model: req.Model, CreatedAt: time.Now().UTC(),
			Message: api.Message{Role: "assistant", Content: piece}}
		if final != nil {
			resp.Done, resp.DoneReason, resp.Metrics = true, reason, *final
		}
		return resp
	})
}

func (s *Server) generate(w http.ResponseWriter, r *http.Request) {
	var req api.GenerateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.answer(w, r, req.Model, req.Stream, func(piece string, final *api.Metrics, reason string) any {
		resp := api.GenerateResponse{Model: req.Model, CreatedAt: time.Now().UTC(), Response: piece}
		if final != nil {
			resp.Done, resp.DoneReason, resp.Metrics = true, reason, *final
		}
		return resp
	})
}

// answer streams the configured pieces as NDJSON, or fails as the fault
// says. line builds one response object.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, model string, stream *bool,
	line func(piece string, final *api.Metrics, reason string) any) {
	s.chats.Add(1)
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	start := time.Now()
	fault, cfg, release := s.nextFault()
	if model == "" {
		writeError(w, http.StatusBadRequest, "model is required")
		return
	}
	if _, ok := s.model(model); !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q not found, try pulling it first", model))
		return
	}
	switch fault {
	case InternalError:
		writeError(w, http.StatusInternalServerError, "llama runner process has terminated: exit status 2")
		return
	case QueueFull:
		writeError(w, http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded")
		return
	case ResetConnection:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // RST, not FIN
				}
				_ = c.Close()
			}
		}
		return
	}
	s.mu.Lock()
	s.loaded[canonical(model)] = true
	s.mu.Unlock()

	wait := func(d time.Duration) bool { // false: the client left or Release
		if d <= 0 {
			return true
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-r.Context().Done():
		case <-release:
		}
		return false
	}
	stall := func() {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}

	if stream != nil && !*stream { // one object with the whole answer
		if !wait(cfg.FirstTokenDelay) {
			return
		}
		m := metrics(start, len(cfg.Tokens))
		writeJSON(w, http.StatusOK, line(strings.Join(cfg.Tokens, ""), &m, "stop"))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	send := func(v any) bool {
		if err := enc.Encode(v); err != nil { // Encode ends each object with '\n'
			return false
		}
		if err := bw.Flush(); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	if fault == StallBeforeFirst {
		if flusher != nil {
			flusher.Flush() // the headers reach the client; nothing else does
		}
		stall()
		return
	}
	if !wait(cfg.FirstTokenDelay) {
		return
	}
	for i, piece := range cfg.Tokens {
		if i == cfg.CutAfter {
			switch fault {
			case StallMidStream:
				stall()
				return
			case CutMidStream:
				panic(http.ErrAbortHandler) // closes the connection: no done object, no chunk terminator
			case ErrorMidStream:
				send(map[string]string{"error": "an error was encountered while running the model: unexpected EOF"})
				return
			}
		}
		if i > 0 && !wait(cfg.TokenDelay) {
			return
		}
		if !send(line(piece, nil, "")) {
			return
		}
	}
	m := metrics(start, len(cfg.Tokens))
	send(line("", &m, "stop"))
}

func metrics(start time.Time, tokens int) api.Metrics {
	total := time.Since(start)
	return api.Metrics{TotalDuration: total, LoadDuration: total / 10, PromptEvalCount: 12,
		PromptEvalDuration: total / 5, EvalCount: tokens, EvalDuration: total / 2}
}
