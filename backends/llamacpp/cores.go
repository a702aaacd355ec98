package llamacpp

import (
	"log/slog"
	"os"
	"runtime"
)

// ReserveCores sets GOMAXPROCS for a process whose engine decodes on
// threads threads (0: every CPU, the engine's default): the cores they
// leave to Go, plus one — the scheduler's own thread, which between
// decodes runs the goroutines a step woke (scheduler.go yields for them).
// With threads on every core that is 1. It starts from the runtime's
// default each time, so call it again whenever the threads change (mcpd
// does on every load of the engine); it leaves GOMAXPROCS alone when the
// environment variable sets it. It returns the GOMAXPROCS in force.
//
// Why: ggml's threads meet at a barrier after every graph node, each
// meeting as late as the slowest. With a spare P, every token the
// scheduler hands to its caller's goroutine makes the Go runtime wake a
// second thread to look for work (wakep), which runs, spins and sleeps on
// a core a ggml worker is using; each such preemption stalls both decode
// threads at the next barrier. With one P nothing runs beside a decode
// unless there is work: a device's packet arriving mid-step is still
// handled (the runtime hands the P of a long cgo call to another thread
// when goroutines wait). Measured on the 2-core reference VM, engine turns
// with GOMAXPROCS 2 and 1 alternating with the C harness in one run
// (docs/native.md).
func ReserveCores(threads int, log *slog.Logger) int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	want := max(1, def-threads+1)
	if want >= def {
		return def
	}
	runtime.GOMAXPROCS(want)
	log.Info("GOMAXPROCS lowered so that Go does not preempt the engine's decode threads", "gomaxprocs", want,
		"default", def, "threads", threads)
	return want
}
