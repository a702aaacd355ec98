// Package testmodel writes the generated tiny GGUF model the tests that
// run real llama.cpp inference load (no weights are downloadable; the
// project generates its models).
package testmodel

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mcpd-project/mcpd/native/gguf"
)

// Tiny writes gguf.TinySpec(1) to dir/tiny.gguf and returns that path;
// any failure fails the test.
func Tiny(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, "tiny.gguf")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := gguf.WriteModel(f, gguf.TinySpec(1)); err != nil {
		f.Close()
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}
