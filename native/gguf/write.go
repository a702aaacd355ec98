package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// KV is one metadata pair. Value must be one of: uint8, int8, uint16, int16,
// uint32, int32, float32, bool, string, uint64, int64, float64, []string,
// []float32, []int32, []uint32.
type KV struct {
	Key   string
	Value any
}

// Tensor describes one tensor to write. Dims are in ggml order: Dims[0] is
// the row length (the "in" dimension of a weight matrix).
type Tensor struct {
	Name string
	Dims []int64
	Type TensorType
	// Fill writes exactly the tensor's bytes (Size()). It is called once,
	// in table order, while the data section is written, so a large model
	// never has to sit in memory.
	Fill func(w io.Writer) error
}

// Size is the tensor's data size in bytes; ok is false for an invalid shape.
func (t Tensor) Size() (int64, bool) {
	if len(t.Dims) == 0 || len(t.Dims) > maxDims {
		return 0, false
	}
	rows := int64(1)
	for _, d := range t.Dims[1:] {
		if d <= 0 {
			return 0, false
		}
		rows *= d
	}
	row, ok := t.Type.RowSize(t.Dims[0])
	if !ok || t.Dims[0] <= 0 {
		return 0, false
	}
	return row * rows, true
}

// File is a whole GGUF file to write.
type File struct {
	KVs     []KV
	Tensors []Tensor
}

// alignment is general.alignment when the file sets it, else the default.
func (f *File) alignment() int64 {
	for _, kv := range f.KVs {
		if kv.Key == "general.alignment" {
			if v, ok := kv.Value.(uint32); ok && v > 0 {
				return int64(v)
			}
		}
	}
	return DefaultAlignment
}

// Write encodes f as GGUF v3. The output depends only on f, so the same
// File (and the same Fill output) always gives the same bytes.
func Write(w io.Writer, f *File) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countWriter{w: bw}
	e := &encoder{w: cw}
	align := f.alignment()

	e.u32(Magic)
	e.u32(Version)
	e.u64(uint64(len(f.Tensors)))
	e.u64(uint64(len(f.KVs)))
	for _, kv := range f.KVs {
		e.str(kv.Key)
		e.value(kv.Key, kv.Value)
	}
	var offset int64
	sizes := make([]int64, len(f.Tensors))
	for i, t := range f.Tensors {
		size, ok := t.Size()
		if !ok {
			return fmt.Errorf("gguf: tensor %q: invalid shape %v for %v", t.Name, t.Dims, t.Type)
		}
		sizes[i] = size
		e.str(t.Name)
		e.u32(uint32(len(t.Dims)))
		for _, d := range t.Dims {
			e.u64(uint64(d))
		}
		e.u32(uint32(t.Type))
		e.u64(uint64(offset))
		offset += alignUp(size, align)
	}
	e.pad(align)
	if e.err != nil {
		return e.err
	}
	for i, t := range f.Tensors {
		start := cw.n
		if err := t.Fill(cw); err != nil {
			return fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
		}
		if got := cw.n - start; got != sizes[i] {
			return fmt.Errorf("gguf: tensor %q: Fill wrote %d bytes, want %d", t.Name, got, sizes[i])
		}
		e.pad(align)
		if e.err != nil {
			return e.err
		}
	}
	return bw.Flush()
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// encoder writes little-endian values and keeps the first error, so the
// header code reads as a plain sequence of fields.
type encoder struct {
	w   *countWriter
	err error
	buf [8]byte
}

func (e *encoder) write(p []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(p)
	}
}

func (e *encoder) u8(v uint8)   { e.write([]byte{v}) }
func (e *encoder) u16(v uint16) { binary.LittleEndian.PutUint16(e.buf[:2], v); e.write(e.buf[:2]) }
func (e *encoder) u32(v uint32) { binary.LittleEndian.PutUint32(e.buf[:4], v); e.write(e.buf[:4]) }
func (e *encoder) u64(v uint64) { binary.LittleEndian.PutUint64(e.buf[:8], v); e.write(e.buf[:8]) }
func (e *encoder) str(s string) { e.u64(uint64(len(s))); e.write([]byte(s)) }

func (e *encoder) pad(align int64) {
	if n := alignUp(e.w.n, align) - e.w.n; n > 0 {
		e.write(make([]byte, n))
	}
}

func (e *encoder) value(key string, v any) {
	switch x := v.(type) {
	case uint8:
		e.u32(uint32(TypeUint8))
		e.u8(x)
	case int8:
		e.u32(uint32(TypeInt8))
		e.u8(uint8(x))
	case uint16:
		e.u32(uint32(TypeUint16))
		e.u16(x)
	case int16:
		e.u32(uint32(TypeInt16))
		e.u16(uint16(x))
	case uint32:
		e.u32(uint32(TypeUint32))
		e.u32(x)
	case int32:
		e.u32(uint32(TypeInt32))
		e.u32(uint32(x))
	case float32:
		e.u32(uint32(TypeFloat32))
		e.u32(math.Float32bits(x))
	case bool:
		e.u32(uint32(TypeBool))
		if x {
			e.u8(1)
		} else {
			e.u8(0)
		}
	case string:
		e.u32(uint32(TypeString))
		e.str(x)
	case uint64:
		e.u32(uint32(TypeUint64))
		e.u64(x)
	case int64:
		e.u32(uint32(TypeInt64))
		e.u64(uint64(x))
	case float64:
		e.u32(uint32(TypeFloat64))
		e.u64(math.Float64bits(x))
	case []string:
		e.arrayHead(TypeString, len(x))
		for _, s := range x {
			e.str(s)
		}
	case []float32:
		e.arrayHead(TypeFloat32, len(x))
		for _, f := range x {
			e.u32(math.Float32bits(f))
		}
	case []int32:
		e.arrayHead(TypeInt32, len(x))
		for _, n := range x {
			e.u32(uint32(n))
		}
	case []uint32:
		e.arrayHead(TypeUint32, len(x))
		for _, n := range x {
			e.u32(n)
		}
	default:
		if e.err == nil {
			e.err = fmt.Errorf("gguf: key %q: unsupported value type %T", key, v)
		}
	}
}

func (e *encoder) arrayHead(t ValueType, n int) {
	e.u32(uint32(TypeArray))
	e.u32(uint32(t))
	e.u64(uint64(n))
}
