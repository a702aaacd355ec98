package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
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
	out, errOut, err := runCmd(t, "", "bench", "--udp", addr, "--devices", "3", "--duration", "5s", "--requests", "30", "--json")
	if err != nil {
		t.Fatalf("%v %s", err, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rep.Requests != 30 || len(rep.Errors) != 0 || rep.TTFTp50 <= 0 || rep.TTFTp99 < rep.TTFTp50 || rep.Tokens == 0 {
		t.Fatalf("report %+v", rep)
	}
}
