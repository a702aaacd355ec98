package soak

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// The log flood's attacker runs in a process of its own, as it would on a
// real machine. Inside the test process its eight sending goroutines share
// the Go scheduler's two Ps with the daemon's one reading goroutine, which
// then reads a far smaller share of what is sent than it does against
// another process; the kernel drops the rest at the socket, the legitimate
// device's datagrams among them (docs/reliability.md). The child is this
// test binary again, told by the environment to flood and exit.
const (
	envFlood     = "MCPD_SOAK_FLOOD"      // the daemon's UDP address: run as the flooder
	envFloodFor  = "MCPD_SOAK_FLOOD_FOR"  // how long
	envFloodRate = "MCPD_SOAK_FLOOD_RATE" // datagrams a second in all ("" or 0: as fast as it can)
	floodSenders = 8
)

// logFlood sends, from floodSenders sessions on 127.3.1.x, ERROR frames
// (each a remote log line before sampling) and PINGs flagged signed with
// a bad tag, rate datagrams a second in all (0: as fast as it can), until
// ctx ends; sent counts datagrams.
func logFlood(ctx context.Context, addr string, rate int, sent *atomic.Int64) {
	var wg sync.WaitGroup
	for h := range floodSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := device.DialUDPFrom(fmt.Sprintf("127.3.1.%d:0", h+1), addr)
			if err != nil {
				return
			}
			defer c.Close()
			if device.New(c, device.Config{DeviceID: fmt.Sprintf("noisy-%d", h)}).Hello(ctx) != nil {
				return
			}
			body, _ := serialproto.NewError(serialproto.CodeInternal, "oops").AppendBody(nil)
			// Paced: a pair of datagrams every `every`, kept on schedule
			// from the start so sleeping late does not lower the rate.
			var every time.Duration
			if rate > 0 {
				every = time.Duration(2 * floodSenders * int64(time.Second) / int64(rate))
			}
			start := time.Now()
			for i := 0; ctx.Err() == nil; i++ {
				raw, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdError, Seq: uint8(i), Data: body})
				_ = c.Send(raw)
				raw, _ = serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Flags: serialproto.FlagSigned, Seq: uint8(i), Data: bytes.Repeat([]byte{1}, 20)})
				_ = c.Send(raw)
				sent.Add(2)
				switch {
				case every > 0:
					if ahead := time.Until(start.Add(time.Duration(i+1) * every)); ahead > time.Millisecond {
						time.Sleep(ahead)
					}
				case i%32 == 0:
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
}

// runFlooder is the child's whole life: flood until SIGTERM or for at most
// MCPD_SOAK_FLOOD_FOR, print the datagrams sent, exit.
func runFlooder(addr string) int {
	d, err := time.ParseDuration(os.Getenv(envFloodFor))
	if err != nil {
		fmt.Fprintln(os.Stderr, "flooder:", err)
		return 2
	}
	rate := 0
	if v := os.Getenv(envFloodRate); v != "" {
		if rate, err = strconv.Atoi(v); err != nil {
			fmt.Fprintln(os.Stderr, "flooder:", err)
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM) // the parent's "stop now"
	defer stop()
	var sent atomic.Int64
	logFlood(ctx, addr, rate, &sent)
	fmt.Println(sent.Load())
	return 0
}

// flooder is a log-flood child process and what it reports at its end.
type flooder struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// startFlooder starts the child for at most d, sending rate datagrams a
// second (0: as fast as it can).
func startFlooder(addr string, d time.Duration, rate int) (*flooder, error) {
	f := &flooder{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	f.cmd.Env = append(os.Environ(), envFlood+"="+addr, envFloodFor+"="+d.String(), envFloodRate+"="+strconv.Itoa(rate))
	f.cmd.Stdout, f.cmd.Stderr = &f.out, &f.out
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("flooder: %w", err)
	}
	return f, nil
}

// stop ends the flood and returns the datagrams the child sent and the
// CPU time it used.
func (f *flooder) stop() (sent int64, cpu time.Duration, err error) {
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	if err := f.cmd.Wait(); err != nil {
		return 0, 0, fmt.Errorf("flooder: %w: %s", err, f.out.String())
	}
	if ru, ok := f.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	sent, err = strconv.ParseInt(strings.TrimSpace(f.out.String()), 10, 64)
	if err != nil {
		return 0, cpu, fmt.Errorf("flooder said %q: %w", f.out.String(), err)
	}
	return sent, cpu, nil
}
