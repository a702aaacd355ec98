package httpapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
)

// TestGuardHostOriginContentType: requests must name the API by a loopback
// host (or a configured one), come from no origin or a loopback one (or a
// configured one), and POST JSON; anything else is refused before a
// handler runs.
func TestGuardHostOriginContentType(t *testing.T) {
	e := &echoEngine{}
	f := start(t, daemon.Config{}, e)
	srv := New(Config{Daemon: f.d, AllowedHosts: []string{"MCPD.lan"}, AllowedOrigins: []string{"https://dash.example"}})
	do := func(method, path, host, origin, ctype, body string) int {
		t.Helper()
		req, err := http.NewRequest(method, f.http.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		rec := &recorder{header: http.Header{}}
		srv.ServeHTTP(rec, req)
		return rec.status
	}
	const gen = `{"prompt":"hi","max_tokens":2}`
	for _, tc := range []struct {
		name                              string
		method, path, host, origin, ctype string
		want                              int
	}{
		{"loopback ip", "GET", "/status", "127.0.0.1:7701", "", "", 200},
		{"localhost", "GET", "/status", "localhost:7701", "", "", 200},
		{"ipv6 loopback", "GET", "/status", "[::1]:7701", "", "", 200},
		{"configured host", "GET", "/status", "mcpd.lan", "", "", 200},
		{"dns rebinding", "GET", "/status", "evil.example:7701", "", "", http.StatusMisdirectedRequest},
		{"lan address", "GET", "/status", "192.168.1.5:7701", "", "", http.StatusMisdirectedRequest},
		{"no host", "GET", "/status", "", "", "", http.StatusMisdirectedRequest},
		{"loopback origin", "POST", "/v1/generate", "127.0.0.1", "http://localhost:3000", "application/json", 200},
		{"configured origin", "POST", "/v1/generate", "127.0.0.1", "https://dash.example", "application/json", 200},
		{"foreign origin", "POST", "/v1/generate", "127.0.0.1", "http://evil.example", "application/json", http.StatusForbidden},
		{"null origin", "POST", "/v1/generate", "127.0.0.1", "null", "application/json", http.StatusForbidden},
		{"foreign origin reads status", "GET", "/status", "127.0.0.1", "http://evil.example", "", http.StatusForbidden},
		{"text/plain post", "POST", "/v1/generate", "127.0.0.1", "", "text/plain", http.StatusUnsupportedMediaType},
		{"form post", "POST", "/v1/generate", "127.0.0.1", "", "application/x-www-form-urlencoded", http.StatusUnsupportedMediaType},
		{"no content type", "POST", "/v1/generate", "127.0.0.1", "", "", http.StatusUnsupportedMediaType},
		{"json with charset", "POST", "/v1/generate", "127.0.0.1", "", "application/json; charset=utf-8", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.calls.Load()
			if got := do(tc.method, tc.path, tc.host, tc.origin, tc.ctype, gen); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
			if ran := e.calls.Load() != before; ran != (tc.want == 200 && tc.method == "POST") {
				t.Fatalf("engine ran: %v", ran)
			}
		})
	}
	if srv.refused.Load() != 9 {
		t.Fatalf("refused %d, want 9", srv.refused.Load())
	}
}

// recorder is a minimal http.ResponseWriter that records the status.
type recorder struct {
	header http.Header
	status int
	body   strings.Builder
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = 200
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Flush() {}

// floodEngine emits 4 KiB pieces until its context ends or emit fails,
// and records how each call ended.
type floodEngine struct {
	calls  atomic.Int64
	mu     sync.Mutex
	ending []error
}

func (e *floodEngine) Name() string { return "flood" }
func (e *floodEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	e.calls.Add(1)
	piece := []byte(strings.Repeat("x", 4096))
	var res backends.Result
	limit := req.Options.MaxTokens
	for i := 0; limit <= 0 || i < limit; i++ {
		if err := emit(piece); err != nil {
			e.end(err)
			return res, err
		}
		if ctx.Err() != nil {
			e.end(ctx.Err())
			return res, ctx.Err()
		}
		res.Tokens++
	}
	e.end(nil)
	return res, nil
}
func (e *floodEngine) end(err error) {
	e.mu.Lock()
	e.ending = append(e.ending, err)
	e.mu.Unlock()
}
func (e *floodEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "flood"}, nil
}
func (e *floodEngine) Healthy(context.Context) error { return nil }
func (e *floodEngine) Close() error                  { return nil }

// TestStreamCutsAClientThatStopsReading: a client that asks and then
// reads nothing fills the stream's bounded buffer; its request is
// cancelled (the engine's emit fails) and its connection cut, and the only
// engine slot serves the next request — on every streaming endpoint, the
// Ollama- and OpenAI-compatible ones included.
func TestStreamCutsAClientThatStopsReading(t *testing.T) {
	for _, tc := range []struct{ path, body string }{
		{"/v1/generate", `{"prompt":"never read","max_tokens":100000}`},
		{"/api/generate", `{"model":"flood","prompt":"never read","options":{"num_predict":100000}}`},
		{"/api/chat", `{"model":"flood","messages":[{"role":"user","content":"never read"}],"options":{"num_predict":100000}}`},
		{"/v1/chat/completions", `{"model":"flood","messages":[{"role":"user","content":"never read"}],"stream":true,"max_tokens":100000}`},
	} {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			e := &floodEngine{}
			f := start(t, daemon.Config{MaxConcurrent: 1, MaxTokens: 100000, DefaultMaxTokens: 100000}, e)
			conn, err := net.Dial("tcp", f.http.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// A small receive buffer fills sooner, but not below loopback's MSS:
			// then the kernel stops sending window updates and the drain below
			// waits on zero-window probes.
			_ = conn.(*net.TCPConn).SetReadBuffer(128 << 10)
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", tc.path, len(tc.body), tc.body)
			waitFor(t, func() bool {
				e.mu.Lock()
				defer e.mu.Unlock()
				return len(e.ending) == 1
			})
			e.mu.Lock()
			ended := e.ending[0]
			e.mu.Unlock()
			if ended == nil {
				t.Fatal("the engine ran to the end for a client that reads nothing")
			}
			// The connection is cut: reading what the kernel buffered ends in EOF
			// or a reset, not in a wait.
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(conn)
			n := 0
			for {
				l, err := br.ReadString('\n')
				n += len(l)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatalf("the connection of a client that stopped reading stays open (%d bytes read)", n)
					}
					break
				}
			}
			resp, lines := f.generate(t, `{"prompt":"next","max_tokens":3}`)
			if resp.StatusCode != 200 || len(lines) != 4 || !lines[3].Done {
				t.Fatalf("the next request: %d %+v", resp.StatusCode, len(lines))
			}
		})
	}
}

// TestConnectionCap: beyond MaxConns open connections, a new one waits
// (in the kernel's backlog) until one closes.
func TestConnectionCap(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := New(Config{Daemon: f.d, MaxConns: 3})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, time.Second) }()
	defer func() { cancel(); <-done }()
	url := "http://" + ln.Addr().String() + "/healthz"
	client := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := client.Get(url); err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v", err)
	} else {
		resp.Body.Close()
	}
	var idle []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	time.Sleep(50 * time.Millisecond) // let the server accept them
	if _, err := client.Get(url); err == nil {
		t.Fatal("a fourth connection was served beyond the cap of 3")
	}
	idle[0].Close()
	waitFor(t, func() bool {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
}

// fakeListener is a listener that only says where it listens.
type fakeListener struct {
	net.Listener
	addr net.Addr
}

func (l fakeListener) Addr() net.Addr { return l.addr }

// TestWarnOffLoopback: listening beyond loopback is logged as a warning.
func TestWarnOffLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		warn bool
	}{{"127.0.0.1:7701", false}, {"[::1]:7701", false}, {"0.0.0.0:7701", true}, {"192.168.1.5:7701", true}} {
		var logs strings.Builder
		s := New(Config{Log: slog.New(slog.NewTextHandler(&logs, nil))})
		ap, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		s.warnOffLoopback(fakeListener{addr: ap})
		if got := strings.Contains(logs.String(), "level=WARN"); got != tc.warn {
			t.Errorf("%s: warned %v, want %v (%s)", tc.addr, got, tc.warn, logs.String())
		}
	}
}

// TestHugeDeadlineDoesNotOverflow: a deadline_ms whose nanoseconds wrap to a few hundred µs is bounded
// before it becomes a duration, so the request runs instead of timing out
// at once.
func TestHugeDeadlineDoesNotOverflow(t *testing.T) {
	e := &echoEngine{gate: make(chan struct{})}
	f := start(t, daemon.Config{}, e)
	time.AfterFunc(50*time.Millisecond, func() { close(e.gate) }) // the engine takes a while
	resp, lines := f.generate(t, `{"prompt":"take your time","deadline_ms":18446744073710}`)
	if resp.StatusCode != 200 || len(lines) == 0 || !lines[len(lines)-1].Done {
		t.Fatalf("status %d, lines %+v", resp.StatusCode, lines)
	}
}
