// Command mcpctl is the operator's and firmware author's tool for mcpd:
// it speaks MCPFrame the way a device does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
)

var version = "dev"

const usage = `mcpctl — talk MCPFrame to mcpd the way a microcontroller does

Usage:
  mcpctl <command> [flags]

Commands:
  ask        send a prompt to mcpd as a device, print the streamed answer
  ping       measure round trips to mcpd
  status     show mcpd's state, backend, model and load; exit 1 unless ready
  bench      scenarios (one device, N over UDP, a paced serial line): TTFT and
             latency percentiles, tokens/s; markdown, JSON and a PNG histogram
  demo       start mcpd on loopback UDP and a pty "UART", ask over each (make run)
  loopback   run a simulated device against a protocol peer over loopback UDP
  decode     explain frames given in hex, or a captured serial byte stream
  impair     a lossy link on loopback: forward UDP to mcpd, losing, duplicating
             and reordering datagrams (seeded)
  version    print the version

ask, ping and status talk to mcpd at 127.0.0.1:7700 unless given
--udp HOST:PORT or --serial PATH.

Run 'mcpctl <command> -h' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(exitStatus(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
}

// exitStatus reports err (once: a bad flag has been printed with the
// usage already) and returns the process's exit status: 0, 2 for a bad
// command line, the protocol's error code for a daemon's ERROR, 130 for
// Ctrl-C, 1 otherwise.
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var fe flagError
	if !errors.As(err, &fe) {
		fmt.Fprintln(stderr, "mcpctl:", err)
	}
	var coded interface{ ExitCode() int }
	if errors.As(err, &coded) {
		return coded.ExitCode()
	}
	return 1
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flagError{errors.New("no command")}
	}
	switch args[0] {
	case "loopback":
		return runLoopback(ctx, args[1:], stdout, stderr)
	case "decode":
		return runDecode(args[1:], stdin, stdout, stderr)
	case "ask":
		return runAsk(ctx, args[1:], stdout, stderr)
	case "ping":
		return runPing(ctx, args[1:], stdout, stderr)
	case "status":
		return runStatus(ctx, args[1:], stdout, stderr)
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "impair":
		return runImpair(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "mcpctl", version)
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "mcpctl: unknown command %q\n\n%s", args[0], usage)
	return flagError{fmt.Errorf("unknown command %q", args[0])}
}
