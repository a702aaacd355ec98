package llamacpp

import (
	"errors"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native/gguf"
)

func TestMemoryEstimate(t *testing.T) {
	spec := gguf.TinySpec(1) // 2 layers, dim 64, 4 heads, 2 KV heads
	path := writeModel(t, spec)
	info, err := gguf.ValidateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	est := EstimateMemory(info, 256, 2)
	// K and V, 2 bytes each, 2 layers × 32 (64 × 2/4 heads) per position.
	if est.Tokens != 512 || est.KVCache != 2*2*2*32*512 {
		t.Fatalf("%+v", est)
	}
	if est.Weights <= 0 || est.Weights > info.FileSize || est.Overhead < 64<<20 {
		t.Fatalf("%+v of a %d-byte file", est, info.FileSize)
	}
	if d := EstimateMemory(info, 0, 1); d.Tokens != min(spec.Context, 2048) {
		t.Fatalf("default context: %d tokens, want %d", d.Tokens, min(spec.Context, 2048))
	}
	err = CheckMemory(path, est, 20<<20)
	if !errors.Is(err, backends.ErrNoMemory) {
		t.Fatalf("err %v", err)
	}
	for _, want := range []string{"needs about 64 MiB", "but only 20 MiB is available", "for 512 tokens", path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if err := CheckMemory(path, est, est.Total()); err != nil {
		t.Fatal(err)
	}
	if err := CheckMemory(path, est, 0); err != nil { // unknown: not refused
		t.Fatal(err)
	}
}

func TestFitParallel(t *testing.T) {
	info, err := gguf.ValidateFile(writeModel(t, gguf.TinySpec(1)))
	if err != nil {
		t.Fatal(err)
	}
	one := EstimateMemory(info, 256, 1).Total()
	three := EstimateMemory(info, 256, 3).Total()
	tests := []struct {
		available int64
		want      int
	}{
		{0, 8},                     // unknown: the default
		{1 << 40, 8},               // plenty
		{three, 3},                 // exactly three fit
		{three + (three-one)/4, 3}, // a bit more than three, less than four
		{one, 1},                   // one
		{one / 2, 1},               // not even one: CheckMemory refuses it
	}
	for _, tt := range tests {
		if got := FitParallel(info, 256, 8, tt.available); got != tt.want {
			t.Errorf("FitParallel(available %d) = %d, want %d", tt.available, got, tt.want)
		}
	}
}
