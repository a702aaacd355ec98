// Command mcpd-mkmodel writes llama-architecture GGUF models with seeded
// random weights: the tiny model tests and `make run` use, and realistic
// shapes for benchmarks. No model can be downloaded on CI machines, and a
// generated file is the same bytes for the same flags on every machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/native/gguf"
)

var version = "dev"

const usage = `mcpd-mkmodel — write a llama-architecture GGUF model with seeded random weights

Usage:
  mcpd-mkmodel [flags] -o FILE

The same flags always give the same bytes. Random weights make a model that
runs like a real one (same shapes, same speed) but writes nonsense: use it
for tests and benchmarks, not answers.

Shapes:
  tiny   ≈116k params: 2 layers, dim 64, 4 heads / 2 KV heads, FF 128, vocab 320, untied, F32
  135m   ≈134M params: 12 layers, dim 768, 12 heads, FF 2048, vocab 32000, untied, Q8_0
         (the project's benchmark shape)
  360m   ≈360M params: 32 layers, dim 960, 15 / 5 heads, FF 2560, vocab 49152, tied, Q8_0

Flags:
`

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "mcpd-mkmodel:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mcpd-mkmodel", flag.ContinueOnError)
	// Parse silently and print usage once, to stdout for -h (asked for)
	// and to stderr for a mistake.
	fs.SetOutput(io.Discard)
	shape := fs.String("shape", "tiny", "model shape: tiny, 135m or 360m")
	seed := fs.Uint64("seed", 1, "weight seed")
	typ := fs.String("type", "", "weight type: f32, f16 or q8_0 (default: the shape's)")
	out := fs.String("o", "", "output file (required)")
	tmpl := fs.String("chat-template", "", "store this string as tokenizer.chat_template")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
		} else {
			fs.SetOutput(stderr)
			fs.Usage()
		}
		return err
	}
	fs.SetOutput(stderr)
	if *showVersion {
		fmt.Fprintln(stdout, "mcpd-mkmodel", version)
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *out == "" {
		fs.Usage()
		return errors.New("-o FILE is required")
	}
	var spec gguf.Spec
	switch strings.ToLower(*shape) {
	case "tiny":
		spec = gguf.TinySpec(*seed)
	case "135m":
		spec = gguf.Bench135MSpec(*seed)
	case "360m":
		spec = gguf.Bench360MSpec(*seed)
	default:
		return fmt.Errorf("unknown shape %q (tiny, 135m, 360m)", *shape)
	}
	switch strings.ToLower(*typ) {
	case "":
	case "f32":
		spec.Weights = gguf.F32
	case "f16":
		spec.Weights = gguf.F16
	case "q8_0", "q8":
		spec.Weights = gguf.Q8_0
	default:
		return fmt.Errorf("unknown type %q (f32, f16, q8_0)", *typ)
	}
	spec.ChatTemplate = *tmpl
	start := time.Now()
	if err := writeFile(ctx, *out, spec); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %s, %d params, %v weights, seed %d, in %v\n",
		*out, spec.Name, spec.Params(), spec.Weights, spec.Seed, time.Since(start).Round(time.Millisecond))
	return nil
}

// writeFile writes to a temporary file and renames it into place, so a
// reader (or a daemon watching the directory) never sees half a model.
func writeFile(_ context.Context, path string, spec gguf.Spec) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := gguf.WriteModel(tmp, spec); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
