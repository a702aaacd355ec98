// Package gguf reads and writes GGUF v3 model files in pure Go.
//
// It has two jobs in mcpd. The writer makes llama-architecture models with
// seeded random weights, because no model can be downloaded in CI and tests
// need real inference on a real file. The validator checks a file's header,
// metadata, tensor table and sizes before llama.cpp ever opens it: llama.cpp
// aborts the whole process (GGML_ASSERT) on some malformed files, and a device
// naming a bad model must never be able to crash the daemon.
//
// The package does no cgo and imports nothing of mcpd, so the model writer
// command links without llama.cpp.
package gguf

import "fmt"

// Magic is "GGUF" read as a little-endian uint32.
const Magic uint32 = 0x46554747

// Version is the GGUF version this package writes.
const Version uint32 = 3

// DefaultAlignment is the data alignment when general.alignment is absent.
const DefaultAlignment = 32

// maxDims mirrors GGML_MAX_DIMS.
const maxDims = 4

// maxNameLen mirrors GGML_MAX_NAME: a tensor name must be shorter.
const maxNameLen = 64

// ValueType is the type tag of a metadata value.
type ValueType uint32

// Metadata value types, as numbered by the GGUF specification.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = [...]string{"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"}

func (t ValueType) String() string {
	if int(t) < len(valueTypeNames) {
		return valueTypeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// size is the encoded size of a fixed-size value type; 0 for string/array
// and unknown types.
func (t ValueType) size() int64 {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// TensorType is a ggml tensor element type (enum ggml_type).
type TensorType uint32

// The tensor types the writer produces; the validator knows every type of
// the pinned ggml (see tensorTypes).
const (
	F32  TensorType = 0
	F16  TensorType = 1
	Q8_0 TensorType = 8
)

type typeInfo struct {
	name      string
	blockSize int64 // elements per block
	typeSize  int64 // bytes per block
}

// tensorTypes mirrors ggml's type_traits for ggml as pinned in go.mod
// (ollama v0.17.4); sizes come from the static_asserts in ggml-common.h.
// Removed types (4, 5, 31–33, 36–38) are absent, so files using them fail
// validation just as they fail in ggml.
var tensorTypes = map[TensorType]typeInfo{
	0:  {"F32", 1, 4},
	1:  {"F16", 1, 2},
	2:  {"Q4_0", 32, 18},
	3:  {"Q4_1", 32, 20},
	6:  {"Q5_0", 32, 22},
	7:  {"Q5_1", 32, 24},
	8:  {"Q8_0", 32, 34},
	9:  {"Q8_1", 32, 36},
	10: {"Q2_K", 256, 84},
	11: {"Q3_K", 256, 110},
	12: {"Q4_K", 256, 144},
	13: {"Q5_K", 256, 176},
	14: {"Q6_K", 256, 210},
	15: {"Q8_K", 256, 292},
	16: {"IQ2_XXS", 256, 66},
	17: {"IQ2_XS", 256, 74},
	18: {"IQ3_XXS", 256, 98},
	19: {"IQ1_S", 256, 50},
	20: {"IQ4_NL", 32, 18},
	21: {"IQ3_S", 256, 110},
	22: {"IQ2_S", 256, 82},
	23: {"IQ4_XS", 256, 136},
	24: {"I8", 1, 1},
	25: {"I16", 1, 2},
	26: {"I32", 1, 4},
	27: {"I64", 1, 8},
	28: {"F64", 1, 8},
	29: {"IQ1_M", 256, 56},
	30: {"BF16", 1, 2},
	34: {"TQ1_0", 256, 54},
	35: {"TQ2_0", 256, 66},
	39: {"MXFP4", 32, 17},
}

func (t TensorType) String() string {
	if ti, ok := tensorTypes[t]; ok {
		return ti.name
	}
	return fmt.Sprintf("ggml_type(%d)", uint32(t))
}

// RowSize is the byte size of n elements of type t; ok is false when t is
// unknown or n is not a whole number of blocks.
func (t TensorType) RowSize(n int64) (size int64, ok bool) {
	ti, known := tensorTypes[t]
	if !known || n < 0 || n%ti.blockSize != 0 {
		return 0, false
	}
	return n / ti.blockSize * ti.typeSize, true
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }
