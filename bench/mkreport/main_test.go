package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkUDPEchoBaseline-2   	   50000	     20000 ns/op
BenchmarkUDPEchoBaseline-2   	   50000	     30000 ns/op
BenchmarkDaemonPing-2        	   20000	     50000 ns/op	     12 B/op
BenchmarkDaemonPing-2        	   20000	     50000 ns/op	     12 B/op
BenchmarkNativePath-2 	      10	  2100000 ns/op	  1.1 device-ms/op	  29.1 device-tok/s	  1.1 device/engine	  1.0 engine-ms/op	  32.0 engine-tok/s
BenchmarkNativeVsHarness-2 	      10	  900000000 ns/op	  5.0 engine-ms/op	  4.0 harness-ms/op	  2.5 memory-ms/op
BenchmarkSharedPrefix/reuse-2 	       3	  300000000 ns/op	  40.0 cached-%	  250.0 ttft-ms
BenchmarkSharedPrefix/whole-2 	       3	  900000000 ns/op	  0 cached-%	  1000.0 ttft-ms
BenchmarkRepeatCached-2 	       5	  140000000 ns/op	  0.26 cached-ms/op	  138.0 warm-ms/op
PASS
`

func TestReportRatios(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "bench.txt")
	md := filepath.Join(dir, "mcpctl.md")
	if err := os.WriteFile(in, []byte(sample), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(md, []byte("### mcpctl bench\n| single | 1 |\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	chat := filepath.Join(dir, "chat.md")
	if err := os.WriteFile(chat, []byte("| turn 10 ÷ turn 1 | 1.1 |\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sections := []section{{"mcpctl bench: what a device sees", md}, {"Chat scenario, KV cache on", chat}, {"left out", ""}}
	if err := run(&out, "2026-11-25", "", sections, []string{in}); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"# mcpd benchmark report — 2026-11-25",
		"| Daemon: PING round trip | 25.0 µs | 50.0 µs | **2.00×** |",
		"| llama.cpp through the daemon (UDP device) | 1.00 ms | 1.10 ms | **1.10×** |",
		"| Ollama path | – | – | not measured |",
		"| llama.cpp engine vs the C harness | 4.00 ms | 5.00 ms | **1.25×** |",
		"| llama.cpp decode vs memory bandwidth | 2.50 ms | 5.00 ms | **2.00×** |",
		"| llama.cpp through the daemon vs the C harness | – | – | not measured |",
		"| DaemonPing | 50.0 µs | 2 runs, 50.0 µs–50.0 µs | 12 B/op |",
		"| NativePath | 2.10 ms | 1 run | 1.1 device-ms/op, 29.1 device-tok/s, 1.1 device/engine, 1 engine-ms/op, 32 engine-tok/s |",
		"| llama.cpp through the daemon (HTTP) | – | – | not measured |",
		"## mcpctl bench: what a device sees",
		"| single | 1 |",
		"| KV cache: shared system prompt | 1.00 s | 250.00 ms | **0.25×** |",
		"| KV cache: warm restart | – | – | not measured |",
		"| Response cache (--cache) | 138.00 ms | 260.0 µs | **0.00188×** |",
		"## Chat scenario, KV cache on\n\n| turn 10 ÷ turn 1 | 1.1 |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "left out") {
		t.Error("a section without a file is in the report")
	}
	if err := run(&out, "", "", nil, nil); err == nil {
		t.Fatal("no input accepted")
	}
}
