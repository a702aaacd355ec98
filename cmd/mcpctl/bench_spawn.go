package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/mcpd-project/mcpd/clients/device"
)

// spawned is an mcpd that bench started: on a loopback UDP port, and on a
// pseudo-terminal joined to a second one by a line paced at the baud rate
// — the serial scenario's device opens the second.
type spawned struct {
	udp        string
	devicePort string // the device's end of the paced line
	exited     chan struct{}
	waitErr    error
	cmd        *exec.Cmd
	closers    []io.Closer
	cancel     context.CancelFunc
}

func spawnMcpd(ctx context.Context, bin, model string, baud, threads int, extra []string, stderr io.Writer) (*spawned, error) {
	addr, err := freeUDPAddr()
	if err != nil {
		return nil, err
	}
	s := &spawned{udp: addr, exited: make(chan struct{})}
	// Two pty pairs: mcpd opens the first's terminal, the device the
	// second's, and a pump carries bytes between the masters at the baud
	// rate — a pty alone moves bytes as fast as memory.
	daemonMaster, daemonTTY, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("pseudo-terminal: %w", err)
	}
	deviceMaster, deviceTTY, err := pty.Open()
	if err != nil {
		daemonMaster.Close()
		daemonTTY.Close()
		return nil, fmt.Errorf("pseudo-terminal: %w", err)
	}
	// The terminals stay open here too, so a master never sees a hangup.
	s.closers = []io.Closer{daemonMaster, daemonTTY, deviceMaster, deviceTTY}
	for _, f := range []*os.File{daemonTTY, deviceTTY} {
		if err := device.MakeRaw(f); err != nil {
			s.close()
			return nil, err
		}
	}
	s.devicePort = deviceTTY.Name()
	pctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	go pace(pctx, daemonMaster, deviceMaster, baud)
	go pace(pctx, deviceMaster, daemonMaster, baud)

	args := []string{"--backend", "native", "--model", model, "--listen-udp", addr,
		"--serial", daemonTTY.Name() + ":" + strconv.Itoa(baud), "--http", "off", "--log-level", "warn",
		"--max-queue", "64"}
	if threads > 0 {
		args = append(args, "--threads", strconv.Itoa(threads))
	}
	args = append(args, extra...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = stderr, stderr
	if err := s.cmd.Start(); err != nil {
		s.close()
		return nil, fmt.Errorf("start mcpd: %w", err)
	}
	go func() { s.waitErr = s.cmd.Wait(); close(s.exited) }()
	return s, nil
}

// ready waits until mcpd answers HELLO (it may be loading the model).
func (s *spawned) ready(ctx context.Context) error {
	t, err := device.DialUDP(s.udp)
	if err != nil {
		return err
	}
	defer t.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return helloWhenReady(ctx, device.New(t, device.Config{DeviceID: "bench-probe"}), s.exited, &s.waitErr)
}

func (s *spawned) stop() error {
	defer s.close()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return s.waitErr
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		return errors.New("mcpd did not stop on SIGTERM")
	}
}

func (s *spawned) close() {
	if s.cancel != nil {
		s.cancel()
	}
	for _, c := range s.closers {
		_ = c.Close()
	}
}

// pace copies src to dst no faster than a UART at baud (8N1: 10 bits a
// byte) carries bytes: each byte arrives once the line could have carried
// it, in pieces of about a millisecond (timers are coarser than a byte at
// 115200 baud, 87 µs). Quiet time earns no credit, as on a real line.
func pace(ctx context.Context, src io.Reader, dst io.Writer, baud int) {
	perByte := time.Duration(float64(time.Second) * 10 / float64(baud))
	piece := max(1, int(time.Millisecond/perByte))
	buf := make([]byte, 256)
	var next time.Time // when the line is free again
	for ctx.Err() == nil {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off < n; off += piece {
			chunk := buf[off:min(off+piece, n)]
			if now := time.Now(); next.Before(now) {
				next = now
			}
			next = next.Add(time.Duration(len(chunk)) * perByte)
			time.Sleep(time.Until(next))
			if _, err := dst.Write(chunk); err != nil {
				return
			}
		}
	}
}
