package httpapi

import (
	"context"
	"errors"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// The API's defences (docs/observability.md, "HTTP API"): nothing on it is
// authenticated, so it must be reachable only by what runs on this
// machine, whatever a web page in a local browser or a peer on the network
// tries.
//
//   - Host: a request must name the API by a loopback name (localhost,
//     127.0.0.1, [::1]) or one of Config.AllowedHosts, so that a DNS
//     rebinding page (evil.example resolving to 127.0.0.1) is refused.
//   - Origin: a browser's cross-origin request (Origin set) must come from
//     a loopback origin or one of Config.AllowedOrigins.
//   - POST bodies must be application/json: a form or text/plain POST,
//     which a page may send cross-origin without a preflight, is refused.
//   - Server timeouts on headers, bodies, idle keep-alives and every
//     write; a cap on open connections (Config.MaxConns).
//   - Streams go through a bounded buffer (stream.go): a client that stops
//     reading is cut and its request cancelled, never holding an engine
//     slot.
//   - A client is who its connection says (its address), never what it
//     claims.

// Defaults of the defences' settings.
const (
	DefaultMaxConns     = 256
	readHeaderTimeout   = 5 * time.Second
	readTimeout         = 30 * time.Second // a whole request, body included
	idleTimeout         = 30 * time.Second // a keep-alive connection between requests
	writeTimeout        = 10 * time.Second // one write (a stream sets it per piece)
	maxHeaderBytes      = 16 << 10
	streamBufferPieces  = 256 // pieces a stream may have waiting for a slow reader
	streamBufferMaxByte = 64 << 10
)

// guard wraps the mux with the Host, Origin and Content-Type checks.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r.Host) {
			s.refused.Add(1)
			writeRefusal(w, r, http.StatusMisdirectedRequest, "host not allowed: name this API by a loopback address or a configured host")
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !s.originAllowed(o) {
			s.refused.Add(1)
			writeRefusal(w, r, http.StatusForbidden, "origin not allowed")
			return
		}
		if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				s.refused.Add(1)
				writeRefusal(w, r, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// writeRefusal answers a request the guard refuses, in the error shape of
// the API it asked: Ollama's {"error":"…"} on /api/*, OpenAI's on its
// paths, mcpd's own elsewhere — always one line of JSON, since Ollama's
// streaming client reads the body line by line and takes a line that is
// not a whole JSON object as the error itself ("{").
func writeRefusal(w http.ResponseWriter, r *http.Request, status int, msg string) {
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, "/api/"):
		ollamaError(w, status, serialproto.CodeForbidden, msg)
	case p == "/v1/chat/completions" || p == "/v1/models":
		openAIError(w, status, serialproto.CodeForbidden, msg)
	default:
		writeError(w, status, serialproto.CodeForbidden, msg)
	}
}

// hostAllowed: the Host header names a loopback address or "localhost"
// (with any port), or one of the configured hosts.
func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	if host == "" {
		return false
	}
	return loopbackName(host) || slices.Contains(s.cfg.AllowedHosts, host)
}

// originAllowed: an Origin of a loopback host (any scheme, any port), or
// one of the configured origins exactly.
func (s *Server) originAllowed(origin string) bool {
	if slices.Contains(s.cfg.AllowedOrigins, origin) {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false // "null" (a sandboxed page, a file:) included
	}
	return loopbackName(strings.ToLower(u.Hostname()))
}

func loopbackName(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// clientOf is who a request comes from, for the per-client cap: its
// connection's address, without the port (a program opening many
// connections is still one client). The body's "client" and the
// X-Mcpd-Client header are not trusted for this.
func clientOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limitListener accepts at most n connections at once; beyond it, Accept
// waits for one to close, so the surplus waits in the kernel's backlog
// and costs the daemon nothing.
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func newLimitListener(l net.Listener, n int) net.Listener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.sem <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// warnOffLoopback logs a warning when ln listens on anything but loopback:
// the API is unauthenticated.
func (s *Server) warnOffLoopback(ln net.Listener) {
	ap, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil || ap.Addr().Unmap().IsLoopback() {
		return
	}
	s.cfg.Log.Warn("the HTTP API listens beyond loopback and has no authentication: anyone who can reach it may generate and read the status",
		"addr", ln.Addr().String())
}

// errSlowReader ends a request whose client stopped reading its stream.
var errSlowReader = errors.New("httpapi: the client stopped reading; request cancelled")

// streamer decouples a stream's writes from the engine's callback: the
// engine hands pieces to a bounded buffer and goes on; a writer goroutine
// writes them out, each write under its own deadline. A full buffer, or a
// write that fails or times out, ends the stream: the request is cancelled
// (its engine slot freed) and the connection closed.
type streamer struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	cancel context.CancelCauseFunc

	mu      sync.Mutex
	queue   [][]byte
	bytes   int
	closed  bool
	failed  error
	wake    chan struct{}
	done    chan struct{}
	timeout time.Duration
}

func newStreamer(w http.ResponseWriter, cancel context.CancelCauseFunc, timeout time.Duration) *streamer {
	st := &streamer{w: w, rc: http.NewResponseController(w), cancel: cancel,
		wake: make(chan struct{}, 1), done: make(chan struct{}), timeout: timeout}
	go st.run()
	return st
}

// push queues b (the streamer keeps it) and reports an error once the
// stream has failed or its buffer is full: the caller stops generating.
func (st *streamer) push(b []byte) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.failed != nil {
		return st.failed
	}
	if len(st.queue) >= streamBufferPieces || st.bytes+len(b) > streamBufferMaxByte {
		st.failLocked(errSlowReader)
		return errSlowReader
	}
	st.queue = append(st.queue, b)
	st.bytes += len(b)
	select {
	case st.wake <- struct{}{}:
	default:
	}
	return nil
}

func (st *streamer) failLocked(err error) {
	if st.failed == nil {
		st.failed = err
		st.cancel(err)
		_ = st.rc.SetWriteDeadline(time.Now()) // unblock a write the client does not read
	}
}

// close waits until everything queued is written (or the stream failed),
// and reports the failure if any.
func (st *streamer) close() error {
	st.mu.Lock()
	st.closed = true
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
	<-st.done
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.failed
}

func (st *streamer) run() {
	defer close(st.done)
	for {
		st.mu.Lock()
		batch, closed, failed := st.queue, st.closed, st.failed
		st.queue, st.bytes = nil, 0
		if failed == nil && len(batch) > 0 {
			// Under mu: a failure's deadline of now (failLocked) is never
			// overwritten by this one.
			_ = st.rc.SetWriteDeadline(time.Now().Add(st.timeout))
		}
		st.mu.Unlock()
		if failed != nil {
			return
		}
		if len(batch) > 0 {
			var err error
			for _, b := range batch {
				if _, err = st.w.Write(b); err != nil {
					break
				}
			}
			if err == nil {
				err = st.rc.Flush()
			}
			if err != nil {
				st.mu.Lock()
				st.failLocked(errSlowReader)
				st.mu.Unlock()
				return
			}
			continue
		}
		if closed {
			return
		}
		<-st.wake
	}
}
