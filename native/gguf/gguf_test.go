package gguf

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func modelBytes(t testing.TB, s Spec) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteModel(&buf, s); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestWriteModelDeterministic(t *testing.T) {
	for _, typ := range []TensorType{F32, F16, Q8_0} {
		s := TinySpec(42)
		s.Weights = typ
		a, b := modelBytes(t, s), modelBytes(t, s)
		if !bytes.Equal(a, b) {
			t.Fatalf("%v: same seed gave different bytes", typ)
		}
		s.Seed = 43
		if c := modelBytes(t, s); bytes.Equal(a, c) {
			t.Fatalf("%v: different seeds gave the same bytes", typ)
		}
	}
}

// TestTinyModelGolden pins the tiny model's bytes: a change to the writer
// that changes them also changes every golden token sequence downstream.
func TestTinyModelGolden(t *testing.T) {
	b := modelBytes(t, TinySpec(1))
	const want = "dba92f69c9736fccb9bc0a9847de9c4214348dfa1a03e617f5701cac768a203c"
	if got := sha256.Sum256(b); hexs(got[:]) != want {
		t.Fatalf("tiny model sha256 = %s (size %d), want %s", hexs(got[:]), len(b), want)
	}
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestTinyModelShape(t *testing.T) {
	s := TinySpec(1)
	b := modelBytes(t, s)
	info, err := Validate(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := info.Params(), s.Params(); got != want {
		t.Fatalf("params: file %d, spec %d", got, want)
	}
	if p := info.Params(); p < 80_000 || p > 130_000 {
		t.Fatalf("tiny model has %d params, want ≈100k", p)
	}
	if n := info.KV["tokenizer.ggml.tokens"].Len; n != 320 {
		t.Fatalf("vocab %d", n)
	}
	if got := info.StringValue("general.architecture"); got != "llama" {
		t.Fatalf("architecture %q", got)
	}
	if info.DataOffset%32 != 0 {
		t.Fatalf("data offset %d not aligned", info.DataOffset)
	}
}

func TestBenchSpecParams(t *testing.T) {
	s := Bench135MSpec(1)
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if p := s.Params(); p < 130e6 || p > 140e6 {
		t.Fatalf("135M shape has %d params", p)
	}
	if err := Bench360MSpec(1).Validate(); err != nil {
		t.Fatal(err)
	}
	tokens, _, _ := Vocabulary(49152)
	seen := map[string]bool{}
	for _, tok := range tokens {
		if seen[tok] {
			t.Fatalf("duplicate token %q", tok)
		}
		seen[tok] = true
	}
	if len(tokens) != 49152 {
		t.Fatalf("vocabulary has %d tokens", len(tokens))
	}
}

func TestFloat16(t *testing.T) {
	for _, c := range []struct {
		f    float32
		want uint16
	}{
		{0, 0}, {1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {1e9, 0x7c00},
		{float32(math.Inf(-1)), 0xfc00}, {5.960464477539063e-08, 0x0001}, {6.103515625e-05, 0x0400},
		{0.333251953125, 0x3555}, {1.0009765625, 0x3c01}, {1.00048828125, 0x3c00}, // tie → even
	} {
		if got := Float16(c.f); got != c.want {
			t.Errorf("Float16(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if got := Float16(float32(math.NaN())); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("NaN → %#04x", got)
	}
}

// small is a minimal valid file: one metadata key and one tensor.
func small(t testing.TB) []byte {
	t.Helper()
	f := &File{
		KVs: []KV{{"general.architecture", "test"}, {"general.alignment", uint32(32)}},
		Tensors: []Tensor{
			{Name: "a", Dims: []int64{4, 2}, Type: F32, Fill: constF32(8, 1)},
			{Name: "b", Dims: []int64{3}, Type: F32, Fill: constF32(3, 2)},
		},
	}
	var buf bytes.Buffer
	if err := Write(&buf, f); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// edit returns a copy of b with fn applied.
func edit(b []byte, fn func([]byte) []byte) []byte {
	return fn(append([]byte(nil), b...))
}

func TestValidateRejects(t *testing.T) {
	good := small(t)
	tiny := modelBytes(t, TinySpec(1))
	// Offsets in `small`: header 24 bytes; key 1 at 24.
	tensorCountAt, kvCountAt := 8, 16
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(rng.UintN(256))
	}
	withKVs := func(kvs ...KV) []byte {
		var buf bytes.Buffer
		f := &File{KVs: kvs}
		if err := Write(&buf, f); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	tinyFile, err := TinySpec(1).File()
	if err != nil {
		t.Fatal(err)
	}
	replaceKV := func(key string, v any) []byte {
		f := *tinyFile
		f.KVs = append([]KV(nil), tinyFile.KVs...)
		for i := range f.KVs {
			if f.KVs[i].Key == key {
				f.KVs[i].Value = v
			}
		}
		var buf bytes.Buffer
		if err := Write(&buf, &f); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"three bytes", []byte("GGU"), ErrTruncated},
		{"wrong magic", edit(good, func(b []byte) []byte { copy(b, "GGML"); return b }), ErrNotGGUF},
		{"random bytes", random, ErrNotGGUF},
		{"version 1", edit(good, func(b []byte) []byte { b[4] = 1; return b }), ErrVersion},
		{"version huge", edit(good, func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4:], 0x03000000); return b }), ErrVersion},
		{"header only", good[:24], ErrTruncated},
		{"huge tensor count", edit(good, func(b []byte) []byte { binary.LittleEndian.PutUint64(b[tensorCountAt:], math.MaxUint64); return b }), ErrCorrupt},
		{"tensor count beyond file", edit(good, func(b []byte) []byte { binary.LittleEndian.PutUint64(b[tensorCountAt:], 1000); return b }), ErrTruncated},
		{"huge kv count", edit(good, func(b []byte) []byte { binary.LittleEndian.PutUint64(b[kvCountAt:], 1<<40); return b }), ErrCorrupt},
		{"huge key length", edit(good, func(b []byte) []byte { binary.LittleEndian.PutUint64(b[24:], 1<<62); return b }), ErrCorrupt},
		{"key past end", edit(good, func(b []byte) []byte { binary.LittleEndian.PutUint64(b[24:], 1<<20); return b }), ErrTruncated},
		{"truncated in tensor data", good[:len(good)-40], ErrTruncated},
		{"truncated model", tiny[:len(tiny)/2], ErrTruncated},
		{"truncated in metadata", tiny[:1000], ErrTruncated},
		{"empty key", withKVs(KV{"", "x"}), ErrCorrupt},
		{"duplicate key", withKVs(KV{"general.architecture", "x"}, KV{"general.architecture", "y"}), ErrCorrupt},
		{"alignment not u32", withKVs(KV{"general.architecture", "x"}, KV{"general.alignment", uint64(32)}), ErrCorrupt},
		{"alignment not power of two", withKVs(KV{"general.architecture", "x"}, KV{"general.alignment", uint32(24)}), ErrCorrupt},
		{"no architecture", withKVs(KV{"x", "y"}), ErrUnsupported},
		{"short scores", replaceKV("tokenizer.ggml.scores", []float32{1, 2}), ErrCorrupt},
		{"token types wrong type", replaceKV("tokenizer.ggml.token_type", make([]uint32, 320)), ErrCorrupt},
		{"tokens not strings", replaceKV("tokenizer.ggml.tokens", make([]int32, 320)), ErrCorrupt},
		{"heads do not divide", replaceKV("llama.attention.head_count", uint32(3)), ErrUnsupported},
		{"zero layers", replaceKV("llama.block_count", uint32(0)), ErrUnsupported},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Validate(bytes.NewReader(c.data), int64(len(c.data)))
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			t.Log(err)
		})
	}
}

// TestValidateTensorTable corrupts fields of the tensor table of `small`.
func TestValidateTensorTable(t *testing.T) {
	good := small(t)
	info, err := Validate(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Tensors) != 2 || info.Tensors[1].Offset != 32 {
		t.Fatalf("tensors %+v", info.Tensors)
	}
	// Locate tensor "a": its name follows the 8-byte length 1.
	at := bytes.Index(good, []byte{1, 0, 0, 0, 0, 0, 0, 0, 'a'})
	if at < 0 {
		t.Fatal("tensor a not found")
	}
	dims := at + 9 // n_dims u32, then dims
	typ := dims + 4 + 16
	off := typ + 4
	cases := []struct {
		name string
		fn   func(b []byte)
		want error
	}{
		{"zero dims", func(b []byte) { binary.LittleEndian.PutUint32(b[dims:], 0) }, ErrCorrupt},
		{"five dims", func(b []byte) { binary.LittleEndian.PutUint32(b[dims:], 5) }, ErrCorrupt},
		{"zero dimension", func(b []byte) { binary.LittleEndian.PutUint64(b[dims+4:], 0) }, ErrCorrupt},
		{"negative dimension", func(b []byte) { binary.LittleEndian.PutUint64(b[dims+4:], 1<<63) }, ErrCorrupt},
		{"overflowing shape", func(b []byte) {
			binary.LittleEndian.PutUint64(b[dims+4:], 1<<40)
			binary.LittleEndian.PutUint64(b[dims+12:], 1<<40)
		}, ErrCorrupt},
		{"huge tensor", func(b []byte) { binary.LittleEndian.PutUint64(b[dims+12:], 1<<30) }, ErrTruncated},
		{"unknown type", func(b []byte) { binary.LittleEndian.PutUint32(b[typ:], 4) }, ErrUnsupported},
		{"type out of range", func(b []byte) { binary.LittleEndian.PutUint32(b[typ:], 1000) }, ErrUnsupported},
		{"row not whole blocks", func(b []byte) { binary.LittleEndian.PutUint32(b[typ:], uint32(Q8_0)) }, ErrCorrupt},
		{"misplaced offset", func(b []byte) { binary.LittleEndian.PutUint64(b[off:], 32) }, ErrCorrupt},
		{"offset beyond file", func(b []byte) { binary.LittleEndian.PutUint64(b[off:], 1<<50) }, ErrTruncated},
		{"long name", func(b []byte) { binary.LittleEndian.PutUint64(b[at:], 100) }, ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := edit(good, func(b []byte) []byte { c.fn(b); return b })
			_, err := Validate(bytes.NewReader(b), int64(len(b)))
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestValidateFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := ValidateFile(filepath.Join(dir, "missing.gguf")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := ValidateFile(dir); err == nil {
		t.Fatal("a directory validated")
	}
	p := filepath.Join(dir, "tiny.gguf")
	if err := os.WriteFile(p, modelBytes(t, TinySpec(7)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ValidateFile(p); err != nil {
		t.Fatal(err)
	}
}

// failingReaderAt makes sure I/O errors surface as errors.
type failingReaderAt struct{}

func (failingReaderAt) ReadAt([]byte, int64) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestValidateReadError(t *testing.T) {
	if _, err := Validate(failingReaderAt{}, 1000); err == nil {
		t.Fatal("no error")
	}
}

func FuzzValidate(f *testing.F) {
	f.Add(small(f))
	s := TinySpec(3)
	s.Vocab = 260
	s.Layers = 1
	s.Dim = 8
	s.Heads, s.KVHeads, s.FF = 2, 1, 8
	f.Add(modelBytes(f, s))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := Validate(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if info != nil {
				t.Fatal("info with error")
			}
			return
		}
		// Whatever passes must have every tensor inside the file.
		for _, ti := range info.Tensors {
			if ti.Size < 0 || info.DataOffset+ti.Offset+ti.Size > int64(len(data)) {
				t.Fatalf("tensor %q out of bounds", ti.Name)
			}
		}
	})
}
