package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/ptytest"
)

// wordEngine answers with the prompt's words in reverse order, or fails
// with err.
type wordEngine struct{ err error }

func (wordEngine) Name() string { return "words" }
func (e wordEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	if e.err != nil {
		return backends.Result{}, e.err
	}
	w := strings.Fields(req.Messages[len(req.Messages)-1].Content)
	for i := len(w) - 1; i >= 0; i-- {
		if err := emit([]byte(w[i] + " ")); err != nil {
			return backends.Result{}, err
		}
	}
	return backends.Result{Tokens: len(w)}, nil
}
func (wordEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "reverse"}, nil
}
func (wordEngine) Healthy(context.Context) error { return nil }
func (wordEngine) Close() error                  { return nil }

func startDaemon(t *testing.T, b backends.Backend) string {
	t.Helper()
	d, err := daemon.New(daemon.Config{}, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return l.Addr().String()
}

func TestAskPingStatus(t *testing.T) {
	addr := startDaemon(t, wordEngine{})
	out, errOut, err := runCmd(t, "", "ask", "--udp", addr, "--max-data", "32", "--window", "1", "one two three")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if out != "three two one \n" || !strings.Contains(errOut, "done: 3 tokens") {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}
	out, _, err = runCmd(t, "", "ping", "--udp", addr, "-n", "2")
	if err != nil || strings.Count(out, "PONG") != 2 {
		t.Fatalf("ping: %v %q", err, out)
	}
	out, _, err = runCmd(t, "", "status", "--udp", addr)
	if err != nil || !strings.Contains(out, "ready: backend words, model reverse") {
		t.Fatalf("status: %v %q", err, out)
	}
}

// cachingWords reports cache figures, as the engine selection does.
type cachingWords struct{ wordEngine }

func (cachingWords) CacheStats() backends.CacheStats {
	return backends.CacheStats{Hits: 2, Misses: 1, Bytes: 305, Budget: 1 << 20,
		KV: backends.KVStats{Hits: 7, Misses: 3, Evictions: 1, Bytes: 22528, Engines: 1}}
}

// status prints the cache figures of the extended STATUS_REPLY (protocol.md
// §11.11) under its first line, which stays as scripts read it.
func TestStatusCacheLines(t *testing.T) {
	addr := startDaemon(t, cachingWords{})
	out, _, err := runCmd(t, "", "status", "--udp", addr)
	want := "ready: backend words, model reverse, load 0%, 0 queued\n" +
		"kv cache: 7 hits, 3 misses, 1 evictions, 22528 bytes held\n" +
		"response cache: 2 hits, 1 misses, 0 evictions, 305 bytes held\n"
	if err != nil || out != want {
		t.Fatalf("status: %v\n%s", err, out)
	}
}

func TestAskExitCodeIsTheErrorCode(t *testing.T) {
	addr := startDaemon(t, wordEngine{err: backends.ErrModelNotFound})
	_, _, err := runCmd(t, "", "ask", "--udp", addr, "--timeout", "5s", "hello")
	var coded interface{ ExitCode() int }
	if !errors.As(err, &coded) || coded.ExitCode() != 9 {
		t.Fatalf("want exit code 9 (MODEL_NOT_FOUND), got %v", err)
	}
	if _, _, err := runCmd(t, "", "ask", "--udp", "127.0.0.1:1", "--timeout", "300ms", "hello"); err == nil {
		t.Fatal("no daemon, yet no error")
	}
}

func TestBench(t *testing.T) {
	addr := startDaemon(t, wordEngine{})
	dir := t.TempDir()
	md, js, pic := filepath.Join(dir, "r.md"), filepath.Join(dir, "r.json"), filepath.Join(dir, "r.png")
	out, errOut, err := runCmd(t, "", "bench", "--udp", addr, "--devices", "3", "--duration", "5s", "--requests", "30",
		"--warmup", "2", "--json", "--json-out", js, "--markdown", md, "--png", pic)
	if err != nil {
		t.Fatalf("%v %s", err, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Scenarios) != 2 || rep.Scenarios[0].Name != "single" || rep.Scenarios[1].Name != "udp" || rep.Scenarios[1].Devices != 3 {
		t.Fatalf("scenarios %+v", rep.Scenarios)
	}
	for _, s := range rep.Scenarios {
		if s.Requests != 30 || len(s.Errors) != 0 || s.TTFTp50 <= 0 || s.TTFTp99 < s.TTFTp95 || s.TTFTp95 < s.TTFTp50 ||
			s.Tokens == 0 || len(s.Latencies) != 30 || s.Latencyp99 < s.Latencyp50 {
			t.Fatalf("%s: %+v", s.Name, s)
		}
	}
	if saved, err := os.ReadFile(js); err != nil || string(saved) != out {
		t.Fatalf("--json-out differs from stdout: %v", err)
	}
	text, err := os.ReadFile(md)
	if err != nil || !strings.Contains(string(text), "| single | 1 | udp | 30 | 0 |") || !strings.Contains(string(text), "| udp | 3 | udp | 30 | 0 |") ||
		!strings.Contains(string(text), "![request latency histogram](r.png)") {
		t.Fatalf("markdown: %v\n%s", err, text)
	}
	f, err := os.Open(pic)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != histWidth || b.Dy() != 2*(panelH+marginTop+marginBot) {
		t.Fatalf("histogram %v", b)
	}
	// The bars are drawn: some pixel of the first panel has the bar colour.
	found := false
	for y := marginTop; y < marginTop+panelH && !found; y++ {
		for x := marginL; x < histWidth-marginR; x++ {
			if r, g, b, _ := img.At(x, y).RGBA(); r>>8 == uint32(histBars[0].R) && g>>8 == uint32(histBars[0].G) && b>>8 == uint32(histBars[0].B) {
				found = true
				break
			}
		}
	}
	if !found {
		t.Fatal("no bars in the histogram")
	}
}

// pacedLine joins two pty pairs through pace, like a UART cable: it
// returns the terminal the daemon opens and the one the device opens.
func pacedLine(t *testing.T, baud int) (daemonEnd, deviceEnd string) {
	t.Helper()
	m0, daemonEnd := ptytest.Open(t)
	m1, deviceEnd := ptytest.Open(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go pace(ctx, m0, m1, baud)
	go pace(ctx, m1, m0, baud)
	return daemonEnd, deviceEnd
}

func TestPaceHoldsTheBaudRate(t *testing.T) {
	var out bytes.Buffer
	start := time.Now()
	pace(context.Background(), bytes.NewReader(make([]byte, 96)), &out, 9600) // 96 bytes × 10 bits = 100 ms at 9600 baud
	if el := time.Since(start); out.Len() != 96 || el < 95*time.Millisecond {
		t.Fatalf("%d bytes in %v: faster than 9600 baud allows", out.Len(), el)
	}
}

func TestBenchSerialScenario(t *testing.T) {
	daemonEnd, deviceEnd := pacedLine(t, 115200)
	d, err := daemon.New(daemon.Config{}, wordEngine{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := daemon.ParseSerial(daemonEnd + ":115200")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, daemon.NewSerialLink(sc, nil)); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	out, errOut, err := runCmd(t, "", "bench", "--serial", deviceEnd, "--baud", "115200", "--duration", "10s", "--requests", "5", "--json")
	if err != nil {
		t.Fatalf("%v %s", err, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Scenarios) != 1 || rep.Scenarios[0].Transport != "serial" || rep.Scenarios[0].Baud != 115200 ||
		rep.Scenarios[0].Requests != 5 || len(rep.Scenarios[0].Errors) != 0 {
		t.Fatalf("report %+v", rep.Scenarios)
	}
}

func TestBenchNeedsATarget(t *testing.T) {
	if _, _, err := runCmd(t, "", "bench", "--duration", "1s"); err == nil {
		t.Fatal("no target, no error")
	}
	if _, _, err := runCmd(t, "", "bench", "--udp", "127.0.0.1:1", "--scenario", "serial"); err == nil {
		t.Fatal("serial scenario without --serial accepted")
	}
}

// ask --schema N sends SCHEMA (the daemon here has none registered: exit
// 17, UNSUPPORTED_OPTION, with the daemon's reason); --schema-json sends
// the schema inline and the request runs; a bad id is a usage error.
func TestAskSchema(t *testing.T) {
	addr := startDaemon(t, wordEngine{})
	_, _, err := runCmd(t, "", "ask", "--udp", addr, "--schema", "7", "fan?")
	var stderr bytes.Buffer
	if st := exitStatus(err, &stderr); st != 17 || !strings.Contains(err.Error(), "no schema 7") {
		t.Fatalf("--schema 7: exit %d, %v", st, err)
	}
	out, errOut, err := runCmd(t, "", "ask", "--udp", addr, "--schema-json", `{"type":"boolean"}`, "yes no")
	if err != nil || out != "no yes \n" {
		t.Fatalf("--schema-json: %q %v\n%s", out, err, errOut)
	}
	_, _, err = runCmd(t, "", "ask", "--udp", addr, "--schema", "256", "x")
	if st := exitStatus(err, &stderr); st != 2 {
		t.Fatalf("--schema 256: exit %d, %v", st, err)
	}
}
