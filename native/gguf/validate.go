package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// Errors the validator returns, wrapped with detail; test with errors.Is.
var (
	// ErrNotGGUF: the file does not start with the GGUF magic.
	ErrNotGGUF = errors.New("gguf: not a GGUF file")
	// ErrVersion: a GGUF version this build does not read.
	ErrVersion = errors.New("gguf: unsupported GGUF version")
	// ErrTruncated: the file ends before its header, metadata or tensor data.
	ErrTruncated = errors.New("gguf: file truncated")
	// ErrCorrupt: a field holds a value no valid file has.
	ErrCorrupt = errors.New("gguf: file corrupt")
	// ErrUnsupported: a well-formed file llama.cpp cannot run here.
	ErrUnsupported = errors.New("gguf: model not supported")
)

// Limits the validator enforces beyond what the file size implies. They
// are far above any real model (the largest have a few thousand tensors
// and a few hundred metadata keys) and keep a hostile header from making
// us or llama.cpp allocate unbounded tables.
const (
	MaxTensors  = 1 << 16
	MaxKVs      = 1 << 16
	maxArrayLen = 1 << 26
	maxStrLen   = 1 << 24 // chat templates are the longest strings (~10 kB)
)

// TensorInfo is one entry of the tensor table.
type TensorInfo struct {
	Name   string
	Dims   []int64
	Type   TensorType
	Offset int64 // from the start of the data section
	Size   int64 // bytes
}

// Elements is the tensor's element count.
func (t TensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// Value is a metadata value as the validator keeps it: scalars and strings
// in full, arrays as their element type and length (token lists can hold
// 150k strings; nothing in mcpd needs them in Go).
type Value struct {
	Type     ValueType
	ElemType ValueType // arrays only
	Len      int64     // arrays only
	Uint     uint64    // unsigned and bool values
	Int      int64     // signed values
	Float    float64
	Str      string
}

// Info is what a valid file holds, minus the bulk data.
type Info struct {
	Version    uint32
	Alignment  int64
	DataOffset int64 // absolute offset of the data section
	FileSize   int64
	KV         map[string]Value
	Tensors    []TensorInfo
}

// StringValue returns the string metadata value for key, or "".
func (in *Info) StringValue(key string) string {
	if v, ok := in.KV[key]; ok && v.Type == TypeString {
		return v.Str
	}
	return ""
}

// Uint returns an unsigned integer metadata value for key.
func (in *Info) Uint(key string) (uint64, bool) {
	v, ok := in.KV[key]
	if !ok {
		return 0, false
	}
	switch v.Type {
	case TypeUint8, TypeUint16, TypeUint32, TypeUint64:
		return v.Uint, true
	case TypeInt8, TypeInt16, TypeInt32, TypeInt64:
		if v.Int >= 0 {
			return uint64(v.Int), true
		}
	}
	return 0, false
}

// Params is the total element count of all tensors.
func (in *Info) Params() int64 {
	var n int64
	for _, t := range in.Tensors {
		n += t.Elements()
	}
	return n
}

// ValidateFile opens path and validates it; see Validate.
func ValidateFile(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, path)
	}
	info, err := Validate(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// Validate checks a GGUF file of the given size: header, every metadata
// entry, the tensor table, and that every tensor's data lies inside the file
// at the offset ggml will compute. It also checks the metadata that
// llama.cpp reads without checking types or lengths (token arrays,
// alignment) and the llama hyperparameters that would otherwise trip an
// assertion. It reads only the header and metadata, never the tensor data,
// and allocates in proportion to what it reads, not to what the header
// claims.
func Validate(r io.ReaderAt, size int64) (*Info, error) {
	d := &decoder{r: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 64<<10), size: size}
	info, err := d.file()
	if err != nil {
		return nil, err
	}
	if err := checkSemantics(info); err != nil {
		return nil, err
	}
	return info, nil
}

type decoder struct {
	r    *bufio.Reader
	pos  int64
	size int64
	buf  [8]byte
}

func (d *decoder) remaining() int64 { return d.size - d.pos }

func (d *decoder) read(n int, what string) ([]byte, error) {
	if int64(n) > d.remaining() {
		return nil, fmt.Errorf("%w: %s at offset %d needs %d bytes, %d left", ErrTruncated, what, d.pos, n, d.remaining())
	}
	if _, err := io.ReadFull(d.r, d.buf[:n]); err != nil {
		return nil, fmt.Errorf("%w: %s at offset %d: %w", ErrTruncated, what, d.pos, err)
	}
	d.pos += int64(n)
	return d.buf[:n], nil
}

func (d *decoder) u32(what string) (uint32, error) {
	b, err := d.read(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (d *decoder) u64(what string) (uint64, error) {
	b, err := d.read(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// str reads a length-prefixed string; keep=false skips the bytes without
// allocating (token lists).
func (d *decoder) str(what string, keep bool) (string, error) {
	n, err := d.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > maxStrLen {
		return "", fmt.Errorf("%w: %s at offset %d has length %d (limit %d)", ErrCorrupt, what, d.pos-8, n, maxStrLen)
	}
	if int64(n) > d.remaining() {
		return "", fmt.Errorf("%w: %s at offset %d needs %d bytes, %d left", ErrTruncated, what, d.pos, n, d.remaining())
	}
	if !keep {
		if _, err := d.r.Discard(int(n)); err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrTruncated, what, err)
		}
		d.pos += int64(n)
		return "", nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrTruncated, what, err)
	}
	d.pos += int64(n)
	return string(b), nil
}

func (d *decoder) file() (*Info, error) {
	magic, err := d.u32("magic")
	if err != nil {
		return nil, err
	}
	if magic != Magic {
		return nil, fmt.Errorf("%w: magic %q", ErrNotGGUF, binary.LittleEndian.AppendUint32(nil, magic))
	}
	version, err := d.u32("version")
	if err != nil {
		return nil, err
	}
	// ggml reads v2 and v3 (v3 only added big-endian files, which a
	// little-endian reader would see as an enormous version).
	if version != 2 && version != 3 {
		return nil, fmt.Errorf("%w: %d (want 2 or 3)", ErrVersion, version)
	}
	nTensors, err := d.u64("tensor count")
	if err != nil {
		return nil, err
	}
	nKV, err := d.u64("metadata count")
	if err != nil {
		return nil, err
	}
	// The smallest tensor entry is 8 (name length) + 4 (dims) + 4 (type)
	// + 8 (offset) bytes, the smallest metadata entry 8 + 1 + 4 + 1.
	// A count over the limit is corrupt; one under it that the rest of
	// the file cannot hold is most likely a cut-off download.
	if nTensors > MaxTensors {
		return nil, fmt.Errorf("%w: tensor count %d (limit %d)", ErrCorrupt, nTensors, MaxTensors)
	}
	if nKV > MaxKVs {
		return nil, fmt.Errorf("%w: metadata count %d (limit %d)", ErrCorrupt, nKV, MaxKVs)
	}
	if nTensors*24+nKV*14 > uint64(d.remaining()) {
		return nil, fmt.Errorf("%w: %d tensors and %d metadata entries cannot fit in a %d-byte file", ErrTruncated, nTensors, nKV, d.size)
	}
	info := &Info{Version: version, Alignment: DefaultAlignment, FileSize: d.size, KV: make(map[string]Value, nKV)}
	for i := uint64(0); i < nKV; i++ {
		key, err := d.str(fmt.Sprintf("metadata key %d", i), true)
		if err != nil {
			return nil, err
		}
		// ggml asserts (aborts the process) on an empty key.
		if key == "" {
			return nil, fmt.Errorf("%w: metadata key %d is empty", ErrCorrupt, i)
		}
		if _, dup := info.KV[key]; dup {
			return nil, fmt.Errorf("%w: duplicate metadata key %q", ErrCorrupt, key)
		}
		v, err := d.value(key)
		if err != nil {
			return nil, err
		}
		info.KV[key] = v
	}
	if v, ok := info.KV["general.alignment"]; ok {
		// ggml reads it with gguf_get_val_u32, which asserts on any
		// other type.
		if v.Type != TypeUint32 || v.Uint == 0 || v.Uint&(v.Uint-1) != 0 || v.Uint > 1<<20 {
			return nil, fmt.Errorf("%w: general.alignment must be a power-of-two u32, got %v %d", ErrCorrupt, v.Type, v.Uint)
		}
		info.Alignment = int64(v.Uint)
	}
	names := make(map[string]bool, nTensors)
	for i := uint64(0); i < nTensors; i++ {
		t, err := d.tensorInfo(i)
		if err != nil {
			return nil, err
		}
		if names[t.Name] {
			return nil, fmt.Errorf("%w: duplicate tensor name %q", ErrCorrupt, t.Name)
		}
		names[t.Name] = true
		info.Tensors = append(info.Tensors, t)
	}
	info.DataOffset = alignUp(d.pos, info.Alignment)
	// ggml requires each tensor at exactly the running, aligned offset.
	var want int64
	for _, t := range info.Tensors {
		if t.Offset != want {
			return nil, fmt.Errorf("%w: tensor %q at data offset %d, expected %d", ErrCorrupt, t.Name, t.Offset, want)
		}
		end := info.DataOffset + t.Offset + t.Size
		if end > d.size || end < 0 {
			return nil, fmt.Errorf("%w: tensor %q data ends at byte %d of a %d-byte file", ErrTruncated, t.Name, end, d.size)
		}
		want += alignUp(t.Size, info.Alignment)
	}
	return info, nil
}

func (d *decoder) value(key string) (Value, error) {
	tag, err := d.u32("type of " + key)
	if err != nil {
		return Value{}, err
	}
	t := ValueType(tag)
	if t != TypeArray {
		return d.scalar(key, t, true)
	}
	et, err := d.u32("element type of " + key)
	if err != nil {
		return Value{}, err
	}
	elem := ValueType(et)
	n, err := d.u64("length of " + key)
	if err != nil {
		return Value{}, err
	}
	v := Value{Type: TypeArray, ElemType: elem, Len: int64(n)}
	// ggml rejects nested arrays; check the type before trusting n.
	minSize := elem.size()
	switch {
	case elem == TypeString:
		minSize = 8
	case elem == TypeArray || minSize == 0:
		return Value{}, fmt.Errorf("%w: key %q: array of %v", ErrCorrupt, key, elem)
	}
	if n > maxArrayLen {
		return Value{}, fmt.Errorf("%w: key %q: array length %d (limit %d)", ErrCorrupt, key, n, maxArrayLen)
	}
	if n > uint64(d.remaining()/minSize) {
		return Value{}, fmt.Errorf("%w: key %q: array of %d does not fit the %d bytes left", ErrTruncated, key, n, d.remaining())
	}
	if elem == TypeString {
		for i := uint64(0); i < n; i++ {
			if _, err := d.str(key, false); err != nil {
				return Value{}, err
			}
		}
		return v, nil
	}
	total := int64(n) * minSize
	if elem == TypeBool {
		// Bools must be 0 or 1; read them one by one.
		for i := uint64(0); i < n; i++ {
			if _, err := d.scalar(key, TypeBool, false); err != nil {
				return Value{}, err
			}
		}
		return v, nil
	}
	if _, err := d.r.Discard(int(total)); err != nil {
		return Value{}, fmt.Errorf("%w: key %q: %w", ErrTruncated, key, err)
	}
	d.pos += total
	return v, nil
}

func (d *decoder) scalar(key string, t ValueType, keep bool) (Value, error) {
	v := Value{Type: t}
	if t == TypeString {
		s, err := d.str("value of "+key, keep)
		v.Str = s
		return v, err
	}
	n := t.size()
	if n == 0 {
		return v, fmt.Errorf("%w: key %q has unknown type %d", ErrCorrupt, key, uint32(t))
	}
	b, err := d.read(int(n), "value of "+key)
	if err != nil {
		return v, err
	}
	var u uint64
	for i := n - 1; i >= 0; i-- {
		u = u<<8 | uint64(b[i])
	}
	switch t {
	case TypeUint8, TypeUint16, TypeUint32, TypeUint64:
		v.Uint = u
	case TypeBool:
		if u > 1 {
			return v, fmt.Errorf("%w: key %q: bool value %d", ErrCorrupt, key, u)
		}
		v.Uint = u
	case TypeInt8:
		v.Int = int64(int8(u))
	case TypeInt16:
		v.Int = int64(int16(u))
	case TypeInt32:
		v.Int = int64(int32(u))
	case TypeInt64:
		v.Int = int64(u)
	case TypeFloat32:
		v.Float = float64(math.Float32frombits(uint32(u)))
	case TypeFloat64:
		v.Float = math.Float64frombits(u)
	}
	return v, nil
}

func (d *decoder) tensorInfo(i uint64) (TensorInfo, error) {
	var t TensorInfo
	name, err := d.str(fmt.Sprintf("tensor %d name", i), true)
	if err != nil {
		return t, err
	}
	t.Name = name
	if len(name) >= maxNameLen || name == "" {
		return t, fmt.Errorf("%w: tensor %d name %q: length %d not in [1, %d)", ErrCorrupt, i, name, len(name), maxNameLen)
	}
	nDims, err := d.u32("dimension count of " + name)
	if err != nil {
		return t, err
	}
	if nDims == 0 || nDims > maxDims {
		return t, fmt.Errorf("%w: tensor %q has %d dimensions (want 1..%d)", ErrCorrupt, name, nDims, maxDims)
	}
	elems := int64(1)
	for j := uint32(0); j < nDims; j++ {
		n, err := d.u64("dimension of " + name)
		if err != nil {
			return t, err
		}
		// A zero dimension makes ggml divide by zero while checking the
		// shape; a negative one (as int64) it rejects.
		if n == 0 || n > math.MaxInt64 {
			return t, fmt.Errorf("%w: tensor %q dimension %d is %d", ErrCorrupt, name, j, n)
		}
		if int64(n) > math.MaxInt64/elems {
			return t, fmt.Errorf("%w: tensor %q has too many elements", ErrCorrupt, name)
		}
		elems *= int64(n)
		t.Dims = append(t.Dims, int64(n))
	}
	typ, err := d.u32("type of " + name)
	if err != nil {
		return t, err
	}
	t.Type = TensorType(typ)
	if _, ok := tensorTypes[t.Type]; !ok {
		return t, fmt.Errorf("%w: tensor %q has unknown type %d", ErrUnsupported, name, typ)
	}
	row, ok := t.Type.RowSize(t.Dims[0])
	if !ok {
		return t, fmt.Errorf("%w: tensor %q: row of %d is not a whole number of %v blocks", ErrCorrupt, name, t.Dims[0], t.Type)
	}
	rows := elems / t.Dims[0]
	if row > 0 && rows > d.size/row {
		// Larger than the file can hold; report it when checking bounds
		// would need an overflowing multiplication.
		return t, fmt.Errorf("%w: tensor %q needs more bytes than the file has", ErrTruncated, name)
	}
	t.Size = row * rows
	off, err := d.u64("offset of " + name)
	if err != nil {
		return t, err
	}
	if off > uint64(d.size) {
		return t, fmt.Errorf("%w: tensor %q offset %d beyond a %d-byte file", ErrTruncated, name, off, d.size)
	}
	t.Offset = int64(off)
	return t, nil
}
