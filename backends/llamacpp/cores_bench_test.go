package llamacpp

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/native/harness"
)

// BenchmarkReserveCores is ReserveCores's same-run A/B: one engine
// generating 128-token greedy answers, its 8-token turns alternating
// between the runtime's default GOMAXPROCS and ReserveCores's, each turn
// followed by 8 tokens of the C harness on the same model (as in
// BenchmarkNativeVsHarness). Metrics, over all rounds:
//
//	default/harness, reserved/harness   engine tok/s ÷ harness tok/s
//	reserved/default                    the two engine settings' ratio
//	*-csw/tok                           the process's context switches per
//	                                    generated token in those turns
//	                                    (ggml's workers included)
func BenchmarkReserveCores(b *testing.B) {
	if os.Getenv("GOMAXPROCS") != "" {
		b.Skip("GOMAXPROCS is set in the environment")
	}
	path, threads := benchModel(b)
	runtime.SetDefaultGOMAXPROCS()
	b.Cleanup(func() { runtime.SetDefaultGOMAXPROCS() })
	log := slog.New(slog.DiscardHandler)
	set := []func(){
		func() { runtime.SetDefaultGOMAXPROCS() },
		func() { ReserveCores(threads, log) },
	}
	const n, chunk = 128, 8
	req := greedyReq("Hello", n)
	var h *harness.Harness
	var e *Engine
	var hprompt []int32
	var measuring atomic.Bool
	var engT [2]time.Duration
	var engN [2]int
	var engC [2]int64
	var harT time.Duration
	var harN int
	var harC int64
	var start, markSteps, turn, cur int
	var mark time.Time
	var markC int64
	hook := func(backlog func() int) {
		if !measuring.Load() {
			return
		}
		now, steps := time.Now(), int(e.steps.Load())
		switch {
		case mark.IsZero() && steps == start:
			return
		case mark.IsZero():
			mark, markSteps, markC = now, steps, switches()
			return
		case steps-markSteps < chunk:
			return
		}
		engT[cur] += now.Sub(mark)
		engN[cur] += steps - markSteps
		engC[cur] += switches() - markC
		e.handOver(b, backlog)
		c0 := switches()
		k, d := harnessTurn(b, h, hprompt, chunk)
		harC += switches() - c0
		harT += d
		harN += k
		turn++
		cur = turn % 2
		set[cur]()
		mark, markSteps, markC = time.Now(), steps, switches()
	}
	var err error
	cfg := Config{ModelPath: path, Threads: threads, Logger: log, beforeStep: hook}
	if e, err = New(context.Background(), cfg); err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	if h, err = harness.OpenModel(e.model.LlamaModel(), harness.Params{Threads: threads, Context: e.seqCtx}); err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	prompt, err := e.tokenizePrompt(req.Messages)
	if err != nil {
		b.Fatal(err)
	}
	for _, t := range prompt {
		hprompt = append(hprompt, int32(t))
	}
	if _, err := e.Generate(context.Background(), req, discard); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := h.Begin(hprompt); err != nil {
			b.Fatal(err)
		}
		start, mark = int(e.steps.Load()), time.Time{}
		measuring.Store(true)
		if _, err := e.Generate(context.Background(), req, discard); err != nil {
			b.Fatal(err)
		}
		measuring.Store(false)
	}
	if engN[0] == 0 || engN[1] == 0 || harN == 0 {
		b.Fatalf("nothing measured: engine %v, harness %d tokens", engN, harN)
	}
	hg := float64(harN) / harT.Seconds()
	rate := func(i int) float64 { return float64(engN[i]) / engT[i].Seconds() }
	b.ReportMetric(rate(0)/hg, "default/harness")
	b.ReportMetric(rate(1)/hg, "reserved/harness")
	b.ReportMetric(rate(1)/rate(0), "reserved/default")
	b.ReportMetric(float64(engC[0])/float64(engN[0]), "default-csw/tok")
	b.ReportMetric(float64(engC[1])/float64(engN[1]), "reserved-csw/tok")
	b.ReportMetric(float64(harC)/float64(harN), "harness-csw/tok")
}

// switches counts the process's context switches so far, every thread's.
func switches() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Nvcsw + ru.Nivcsw
}
