package native

import (
	"context"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNothingOnStderr: loading a model, decoding and sampling write nothing
// to the process's stderr (fd 2) — llama.cpp's and ggml's chatter goes to
// slog instead. It swaps fd 2 for a pipe for the duration.
func TestNothingOnStderr(t *testing.T) {
	path := tinyModel(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved, err := unix.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup3(int(w.Fd()), 2, 0); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			unix.Dup3(saved, 2, 0)
			unix.Close(saved)
			w.Close()
			restored = true
		}
	}
	defer restore()
	captured := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		captured <- b
	}()

	m, err := Load(context.Background(), path, ModelParams{})
	if err == nil {
		greedy(t, m, 2, "Hello, world", 8)
		m.Close()
	}
	restore()
	out := <-captured
	if err != nil {
		t.Fatal(err)
	}
	if len(out) > 0 {
		t.Fatalf("%d bytes reached stderr:\n%s", len(out), out)
	}
}
