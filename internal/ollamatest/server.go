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
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
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
	// NoTools: the model's template has no tool calling; a chat with
	// tools is refused with HTTP 400 "… does not support tools".
	NoTools bool
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
	// FirstTokenDelay is extra time before the first piece of every answer.
	FirstTokenDelay time.Duration
	// LoadDelay is loading a model that is not loaded: the first request
	// for it — a chat, a generate or a load request — waits this long,
	// as Ollama's scheduler does, and the model is loaded afterwards
	// (until Unload, or a Stop and Start: a restarted Ollama has nothing
	// loaded).
	LoadDelay time.Duration
	// CutAfter is how many pieces the mid-stream faults send first
	// (default 2).
	CutAfter int
	// Calls script the model's tool calls: a chat that offers tools and
	// holds n tool results answers with Calls[n] — one message with
	// tool_calls and no content, then the done line, as Ollama streams
	// them —, and with Tokens once the script is done.
	Calls []api.ToolCallFunction
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
	loaded     map[string]bool // models a request has loaded: /api/ps lists them
	faults     []Fault         // one per coming chat request, then fault
	fault      Fault
	listener   net.Listener
	httpServer *http.Server
	requests   []api.ChatRequest
	loadReqs   []api.GenerateRequest // load requests (no prompt, no messages), as /api/generate decoded them
	paidLoads  int64                 // chat and generate requests that waited for a model to load
	release    chan struct{}         // closed by Release: stalled handlers return

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

// Start is New for tests: a failure to start fails tb, and the server is
// closed when tb ends.
func Start(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
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
	s.mu.Lock()
	clear(s.loaded) // a restarted Ollama has nothing loaded
	s.mu.Unlock()
	s.serve(ln)
	return nil
}

// Unload drops a model from memory, as Ollama does when its keep_alive
// runs out.
func (s *Server) Unload(name string) {
	s.mu.Lock()
	delete(s.loaded, canonical(name))
	s.mu.Unlock()
}

// Loaded says whether /api/ps lists the model.
func (s *Server) Loaded(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loaded[canonical(name)]
}

// LoadRequests returns the load requests received so far (/api/generate
// without a prompt, /api/chat without messages, as a GenerateRequest).
func (s *Server) LoadRequests() []api.GenerateRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]api.GenerateRequest(nil), s.loadReqs...)
}

// PaidLoads is the number of chat and generate requests that waited for
// their model to load (LoadDelay).
func (s *Server) PaidLoads() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paidLoads
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
