// Package daemontest runs mcpd on a loopback UDP port in front of an
// engine and connects a device to it: the end-to-end setup of the engine
// packages' tests (a real daemon, real sockets), written once.
package daemontest

import (
	"context"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
)

// Session starts a daemon with cfg in front of b on 127.0.0.1 (stopped at
// the test's end) and returns a device that said HELLO to it.
func Session(tb testing.TB, b backends.Backend, cfg daemon.Config, dev device.Config) *device.Client {
	tb.Helper()
	d, err := daemon.New(cfg, b, nil)
	if err != nil {
		tb.Fatal(err)
	}
	l, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx, l) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			tb.Errorf("daemon: %v", err)
		}
	})
	tr, err := device.DialUDP(l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	c := device.New(tr, dev)
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	defer hcancel()
	if err := c.Hello(hctx); err != nil {
		tb.Fatal(err)
	}
	return c
}
