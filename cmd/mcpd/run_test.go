package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/llamacpp"
	"github.com/mcpd-project/mcpd/clients/device"
)

// runMcpd runs the daemon command in-process with args in the background, its
// output in the returned buffer. stop cancels it and reports, with the
// logs, any error run returns; the end-to-end tests defer it.
func runMcpd(ctx context.Context, t *testing.T, args []string, getenv func(string) string) (logs *syncBuffer, stop func()) {
	t.Helper()
	logs = &syncBuffer{}
	dctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(dctx, args, getenv, logs, logs) }()
	return logs, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mcpd: %v\n%s", err, logs.String())
		}
	}
}

// helloUntilReady repeats HELLO until the daemon answers (it may still be
// loading its model) or ctx ends.
func helloUntilReady(ctx context.Context, c *device.Client) {
	for ctx.Err() == nil {
		hctx, hcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := c.Hello(hctx)
		hcancel()
		if err == nil {
			return
		}
	}
}

// nativeAnswer is what the in-process llama.cpp engine, called directly,
// answers to prompt: the reference the daemon's answers must equal.
func nativeAnswer(ctx context.Context, t *testing.T, model, prompt string, opts backends.Options) []byte {
	t.Helper()
	direct, err := llamacpp.New(ctx, llamacpp.Config{ModelPath: model, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	var answer bytes.Buffer
	if _, err := direct.Generate(ctx, backends.Request{Messages: []backends.Message{{Role: backends.RoleUser, Content: prompt}}, Options: opts},
		func(b []byte) error { answer.Write(b); return nil }); err != nil {
		t.Fatal(err)
	}
	return answer.Bytes()
}
