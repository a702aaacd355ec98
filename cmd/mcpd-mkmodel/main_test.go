package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/native/gguf"
)

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"--help"}, &out, &errb)
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-shape") {
		t.Fatalf("err %v, out %q", err, out.String())
	}
}

func TestWritesSameBytes(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"a.gguf", "b.gguf"} {
		p := filepath.Join(dir, name)
		var out bytes.Buffer
		if err := run(context.Background(), []string{"-shape", "tiny", "-seed", "9", "-type", "q8_0", "-o", p}, &out, &out); err != nil {
			t.Fatal(err, out.String())
		}
		paths = append(paths, p)
	}
	a, _ := os.ReadFile(paths[0])
	b, _ := os.ReadFile(paths[1])
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatal("same flags gave different files")
	}
	info, err := gguf.ValidateFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	if info.Tensors[1].Type != gguf.Q8_0 && info.Tensors[0].Type != gguf.Q8_0 {
		t.Fatal("no Q8_0 tensor")
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{}, {"-shape", "huge", "-o", "x"}, {"-type", "q4", "-o", "x"}, {"-o", "x", "extra"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out, &out); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
