package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/daemon/telemetry"
	"github.com/mcpd-project/mcpd/serialproto"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// echoEngine answers "echo: " + the prompt, one word per piece; with gate
// set it holds every request before its first piece until gate closes.
type echoEngine struct {
	gate  chan struct{}
	calls atomic.Int64
}

func (e *echoEngine) Name() string { return "echo" }
func (e *echoEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	e.calls.Add(1)
	start := time.Now()
	if e.gate != nil {
		select {
		case <-e.gate:
		case <-ctx.Done():
			return backends.Result{}, ctx.Err()
		}
	}
	var res backends.Result
	for i, w := range strings.SplitAfter("echo: "+req.Messages[len(req.Messages)-1].Content, " ") {
		if req.Options.MaxTokens > 0 && i >= req.Options.MaxTokens {
			res.Stop = backends.StopLength
			break
		}
		if err := emit([]byte(w)); err != nil {
			return res, err
		}
		if i == 0 {
			res.TTFT = time.Since(start)
		}
		res.Tokens++
	}
	res.PromptTokens, res.Duration = 3, time.Since(start)
	return res, nil
}
func (e *echoEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "echo-model"}, nil
}
func (e *echoEngine) Healthy(context.Context) error { return nil }
func (e *echoEngine) Close() error                  { return nil }

type fixture struct {
	d       *daemon.Daemon
	udp     string // the daemon's UDP address
	http    *httptest.Server
	metrics *telemetry.Metrics
}

// start runs a real daemon on loopback UDP with the HTTP API in front of it.
func start(t *testing.T, cfg daemon.Config, e backends.Backend) *fixture {
	t.Helper()
	d, err := daemon.New(cfg, e, nil)
	if err != nil {
		t.Fatal(err)
	}
	backend := func() telemetry.BackendInfo {
		return telemetry.BackendInfo{Chosen: "echo", Reason: "the only engine configured", Breakers: map[string]string{"echo": "closed"}}
	}
	m := telemetry.NewMetrics(d, backend)
	d.SetObserver(m)
	l, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, l) }()
	srv := httptest.NewServer(New(Config{Daemon: d, Metrics: m, Backend: backend, Version: "test"}))
	t.Cleanup(func() {
		srv.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	waitFor(t, func() bool { return d.Snapshot(context.Background()).State == "ready" })
	return &fixture{d: d, udp: l.Addr().String(), http: srv, metrics: m}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(f.http.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// generate posts body and returns the response and its NDJSON lines.
func (f *fixture) generate(t *testing.T, body string, header ...string) (*http.Response, []GenerateLine) {
	t.Helper()
	req, err := http.NewRequest("POST", f.http.URL+"/v1/generate", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines []GenerateLine
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var l GenerateLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			// an error document is indented JSON over several lines
			return resp, nil
		}
		lines = append(lines, l)
	}
	return resp, lines
}

func askDevice(t *testing.T, addr, id, prompt string) (string, error) {
	t.Helper()
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c := device.New(tr, device.Config{DeviceID: id, MaxData: 32})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	_, err = c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error { text.Write(b); return nil })
	return text.String(), err
}

func TestGenerateStreamsNDJSON(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	resp, lines := f.generate(t, `{"prompt":"how warm is the greenhouse","max_tokens":100}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if len(lines) < 2 {
		t.Fatalf("lines %+v", lines)
	}
	var text strings.Builder
	for _, l := range lines[:len(lines)-1] {
		text.WriteString(l.Response)
	}
	last := lines[len(lines)-1]
	if text.String() != "echo: how warm is the greenhouse" || !last.Done || last.Stop != "eos" || last.Tokens != 6 {
		t.Fatalf("text %q, last %+v", text.String(), last)
	}
	// MAX_TOKENS cuts like a device's.
	_, lines = f.generate(t, `{"prompt":"one two three four","max_tokens":2}`)
	if last := lines[len(lines)-1]; last.Stop != "length" || last.Tokens != 2 {
		t.Fatalf("max_tokens: %+v", lines)
	}
}

func TestGenerateRejectsBadRequests(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	for _, body := range []string{`{`, `{"prompt":""}`, `{"prompt":"x","unknown":1}`, `{"prompt":"x","max_tokens":-1}`} {
		resp, _ := f.generate(t, body)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d", body, resp.StatusCode)
		}
	}
	if resp, err := http.Get(f.http.URL + "/v1/generate"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /v1/generate: %v %v", resp.StatusCode, err)
	}
}

// TestGenerateObeysTheDevicesLimits: the HTTP API and the devices share
// one queue and one set of engine slots; BUSY means the same to both. A
// client is its address: a name it claims changes nothing.
func TestGenerateObeysTheDevicesLimits(t *testing.T) {
	e := &echoEngine{gate: make(chan struct{})}
	f := start(t, daemon.Config{MaxConcurrent: 1, MaxQueue: 2, MaxPerSession: 1, LocalShare: 34, MaxPerSource: -1}, e)

	// A device takes the only slot, a local app its share of the queue (1).
	devDone := make(chan error, 1)
	go func() { _, err := askDevice(t, f.udp, "sensor-1", "hold"); devDone <- err }()
	waitFor(t, func() bool { return e.calls.Load() == 1 })
	httpDone := make(chan []GenerateLine, 1)
	go func() {
		_, lines := f.generate(t, `{"prompt":"queued","client":"app-a"}`)
		httpDone <- lines
	}()
	waitFor(t, func() bool { return f.d.Snapshot(context.Background()).Queued == 1 })

	// Another request from this machine, whatever name it claims, is over
	// the local share (429); a device still gets the place kept for devices.
	for _, claim := range [][]string{nil, {"X-Mcpd-Client", "app-b"}} {
		resp, _ := f.generate(t, `{"prompt":"me again","client":"app-c"}`, claim...)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("local client over its share (claims %v): status %d", claim, resp.StatusCode)
		}
	}
	dev2 := make(chan error, 1)
	go func() { _, err := askDevice(t, f.udp, "sensor-2", "room for me"); dev2 <- err }()
	waitFor(t, func() bool { return f.d.Snapshot(context.Background()).Queued == 2 })
	// Now the queue is full: a device gets BUSY.
	var perr *serialproto.Error
	if _, err := askDevice(t, f.udp, "sensor-3", "me too"); !errors.As(err, &perr) || perr.Code != serialproto.CodeBusy {
		t.Fatalf("device while full: %v", err)
	}
	close(e.gate)
	for _, ch := range []chan error{devDone, dev2} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	lines := <-httpDone
	if len(lines) == 0 || !lines[len(lines)-1].Done {
		t.Fatalf("queued request: %+v", lines)
	}
	_, body := f.get(t, "/metrics")
	for _, want := range []string{
		`mcpd_requests_total{code="BUSY",link="http",outcome="refused"} 2`,
		`mcpd_requests_total{code="none",link="http",outcome="done"} 1`,
		`mcpd_requests_total{code="none",link="udp:` + f.udp + `",outcome="done"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !regexp.MustCompile(`mcpd_requests_total\{code="BUSY",link="udp:[^"]+",outcome="refused"\} 1`).MatchString(body) {
		t.Errorf("metrics lack the device's BUSY")
	}
}

func TestHealthAndReadiness(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	if code, body := f.get(t, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz %d %q", code, body)
	}
	if code, body := f.get(t, "/readyz"); code != 200 || !strings.HasPrefix(body, "ready") {
		t.Fatalf("readyz %d %q", code, body)
	}
	// A daemon that is not serving is alive but not ready.
	d, err := daemon.New(daemon.Config{}, &echoEngine{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Config{Daemon: d}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz of a stopped daemon: %d", resp.StatusCode)
	}
	if resp, err := http.Get(srv.URL + "/metrics"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("/metrics without metrics: %v", err)
	}
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestStatusJSON(t *testing.T) {
	f := start(t, daemon.Config{MaxConcurrent: 2, MaxQueue: 8}, &echoEngine{})
	if _, err := askDevice(t, f.udp, "sensor-7", "status please"); err != nil {
		t.Fatal(err)
	}
	// The request ends for the daemon when the device has acknowledged DONE.
	waitFor(t, func() bool {
		s := f.d.Snapshot(context.Background())
		return len(s.Sessions) == 1 && s.Sessions[0].Active == 0 && s.Counters.Done == 1
	})
	code, body := f.get(t, "/status")
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if st.Daemon.State != "ready" || len(st.Daemon.Sessions) != 1 || st.Daemon.Sessions[0].Device != "sensor-7" ||
		st.Backend == nil || st.Backend.Chosen != "echo" || st.Daemon.Model != "echo-model" || st.Daemon.Counters.Done != 1 {
		t.Fatalf("status: %s", body)
	}
	// The document's shape, with what varies from run to run masked.
	masked := regexp.MustCompile(`("uptime_s"|"idle_s"|"frames_in"|"frames_out"): [0-9.e-]+`).ReplaceAllString(body, `$1: 0`)
	masked = strings.ReplaceAll(masked, f.udp, "ADDR")
	masked = regexp.MustCompile(`"since": "[^"]+"`).ReplaceAllString(masked, `"since": "TIME"`)
	masked = regexp.MustCompile(`ADDR\|127\.0\.0\.1:[0-9]+`).ReplaceAllString(masked, "ADDR|PEER")
	golden(t, "status.json", masked)
}

// TestMetricNames pins the metric names and label sets: dashboards and
// alerts depend on them.
func TestMetricNames(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	if _, err := askDevice(t, f.udp, "sensor-1", "count me"); err != nil {
		t.Fatal(err)
	}
	f.generate(t, `{"prompt":"and me"}`)
	// A datagram that is not a frame is a bad frame.
	conn, err := net.Dial("udp", f.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte{0x55, 0xff, 0x00}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.d.Stats().BadFrames.Load() == 1 })
	// A TOKEN lost on the way is sent again.
	tr, err := device.DialUDP(f.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	lossy := device.New(&dropFirstToken{Transport: tr}, device.Config{DeviceID: "sensor-2", MaxData: 32})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lossy.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := lossy.Ask(ctx, &serialproto.Infer{Prompt: "one token goes missing"}, func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if f.d.Stats().Retransmits.Load() == 0 {
		t.Fatal("the lost TOKEN was not sent again")
	}
	// Serial-only series, which this UDP test does not provoke (the serial
	// tests do), reported as a serial link reports them.
	f.d.LinkStats("serial:/dev/ttyUSB0", 3, 1)
	// Tool calls (protocol.md §16), which the daemon's tool tests make.
	f.d.Stats().ToolCalls.Add(1)
	_, body := f.get(t, "/metrics")
	seen := map[string]bool{}
	re := regexp.MustCompile(`^(mcpd_[a-z_]+)(\{[^}]*\})?`)
	labelName := regexp.MustCompile(`([a-z_]+)="`)
	for line := range strings.SplitSeq(body, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var labels []string
		for _, l := range labelName.FindAllStringSubmatch(m[2], -1) {
			labels = append(labels, l[1])
		}
		seen[fmt.Sprintf("%s{%s}", m[1], strings.Join(labels, ","))] = true
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	golden(t, "metrics.txt", strings.Join(names, "\n")+"\n")
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in      string
		enabled bool
		ok      bool
	}{
		{"", false, true}, {"off", false, true}, {"127.0.0.1:7701", true, true}, {"[::1]:0", true, true},
		{"localhost", false, false}, {"127.0.0.1:99999", false, false},
	} {
		_, enabled, err := ParseAddr(tc.in)
		if enabled != tc.enabled || (err == nil) != tc.ok {
			t.Errorf("ParseAddr(%q) = %v, %v", tc.in, enabled, err)
		}
	}
}

// dropFirstToken loses the first TOKEN the device would receive.
type dropFirstToken struct {
	device.Transport
	dropped bool
}

func (d *dropFirstToken) Recv(deadline time.Time) (serialproto.Frame, error) {
	for {
		f, err := d.Transport.Recv(deadline)
		if err != nil || f.Cmd != serialproto.CmdToken || d.dropped {
			return f, err
		}
		d.dropped = true
	}
}
