package serialproto

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// OptionType is the type byte of an INFER option (docs/protocol.md §11.4).
// Types 0x80..0xFF are critical: a receiver that does not know one rejects
// the INFER; unknown types below 0x80 are skipped.
type OptionType uint8

// INFER options.
const (
	OptModel         OptionType = 0x01
	OptMaxTokens     OptionType = 0x02
	OptTemperature   OptionType = 0x03
	OptSeed          OptionType = 0x04
	OptTopK          OptionType = 0x05
	OptTopP          OptionType = 0x06
	OptMinP          OptionType = 0x07
	OptRepeatPenalty OptionType = 0x08
	OptNewChat       OptionType = 0x09
	OptSystem        OptionType = 0x0A
	OptDeadlineMS    OptionType = 0x0B
	OptContext       OptionType = 0x0C
	optKnownLimit    OptionType = 0x0D
	optCritical      OptionType = 0x80
	// Critical options: a daemon that does not know them must refuse the
	// INFER rather than answer in prose a device cannot parse.
	OptSchema     OptionType = 0x81 // id of a schema the daemon has registered
	OptSchemaJSON OptionType = 0x82 // an inline JSON Schema of the subset
	// OptToolsOn (empty): the request may call the session's declared
	// tools (§16); a daemon without tools must refuse it.
	OptToolsOn       OptionType = 0x83
	optCriticalLimit OptionType = 0x84
)

// Infer is a prompt with its options. Set records which options are
// present: an absent option means "the daemon's default", which differs from
// an explicit zero (TEMPERATURE 0 means greedy).
type Infer struct {
	Set           OptionSet
	Model         string
	MaxTokens     uint16
	Temperature   uint16 // × 1/1000
	Seed          uint32
	TopK          uint16
	TopP          uint16 // × 1/1000
	MinP          uint16 // × 1/1000
	RepeatPenalty uint16 // × 1/1000
	System        string
	DeadlineMS    uint32
	Context       uint32
	SchemaID      uint8  // OptSchema: a schema of the daemon's config
	SchemaJSON    string // OptSchemaJSON: ≤ MaxSchemaJSONLen bytes
	Prompt        string
}

// MaxSchemaJSONLen is the longest inline schema (SCHEMA_JSON): what an
// options block of 255 bytes leaves after the option's own two bytes.
const MaxSchemaJSONLen = 253

// OptionSet is a bit set of option types: bits 0..31 for types 0x00..0x1F,
// bits 32..63 for the critical types 0x80..0x9F.
type OptionSet uint64

func optBit(t OptionType) (uint, bool) {
	switch {
	case t < 0x20:
		return uint(t), true
	case t >= 0x80 && t < 0xA0:
		return 32 + uint(t-0x80), true
	}
	return 0, false
}

// Has reports whether t is in the set.
func (s OptionSet) Has(t OptionType) bool {
	b, ok := optBit(t)
	return ok && s&(1<<b) != 0
}

// With returns the set with t added (unchanged for a type it cannot hold).
func (s OptionSet) With(t OptionType) OptionSet {
	if b, ok := optBit(t); ok {
		return s | 1<<b
	}
	return s
}

// known reports whether t is an option this package decodes.
func known(t OptionType) bool {
	return (t > 0 && t < optKnownLimit) || (t > optCritical && t < optCriticalLimit)
}

// optionOrder is the encoding order: ascending type.
var optionOrder = func() []OptionType {
	var ts []OptionType
	for t := OptionType(1); t < optCriticalLimit; t++ {
		if known(t) {
			ts = append(ts, t)
		}
	}
	return ts
}()

func (*Infer) Command() Command { return CmdInfer }

func (m *Infer) AppendBody(dst []byte) ([]byte, error) {
	if m.Prompt == "" {
		return dst, malformed(CmdInfer, "empty prompt")
	}
	if !utf8.ValidString(m.Prompt) {
		return dst, malformed(CmdInfer, "prompt is not UTF-8")
	}
	start := len(dst)
	dst = append(dst, 0) // opt_len, patched below
	for _, t := range optionOrder {
		if !m.Set.Has(t) {
			continue
		}
		var err error
		if dst, err = m.appendOption(dst, t); err != nil {
			return dst[:start], err
		}
	}
	optLen := len(dst) - start - 1
	if optLen > 255 {
		return dst[:start], malformed(CmdInfer, "options take %d bytes, at most 255", optLen)
	}
	dst[start] = byte(optLen)
	return append(dst, m.Prompt...), nil
}

// field returns where option t lives in m: a string with its size limit, a
// u8, u16 or a u32 (exactly one non-nil), or all nil for the flag NEW_CHAT.
// One table serves encoding and decoding, so the two can't disagree.
func (m *Infer) field(t OptionType) (str *string, limit int, u8 *uint8, u16 *uint16, u32 *uint32) {
	switch t {
	case OptSchema:
		return nil, 0, &m.SchemaID, nil, nil
	case OptSchemaJSON:
		return &m.SchemaJSON, MaxSchemaJSONLen, nil, nil, nil
	case OptModel:
		return &m.Model, MaxModelLen, nil, nil, nil
	case OptSystem:
		return &m.System, MaxSystemLen, nil, nil, nil
	case OptMaxTokens:
		return nil, 0, nil, &m.MaxTokens, nil
	case OptTemperature:
		return nil, 0, nil, &m.Temperature, nil
	case OptTopK:
		return nil, 0, nil, &m.TopK, nil
	case OptTopP:
		return nil, 0, nil, &m.TopP, nil
	case OptMinP:
		return nil, 0, nil, &m.MinP, nil
	case OptRepeatPenalty:
		return nil, 0, nil, &m.RepeatPenalty, nil
	case OptSeed:
		return nil, 0, nil, nil, &m.Seed
	case OptDeadlineMS:
		return nil, 0, nil, nil, &m.DeadlineMS
	case OptContext:
		return nil, 0, nil, nil, &m.Context
	}
	return nil, 0, nil, nil, nil // OptNewChat, OptToolsOn: presence is the value
}

func badString(t OptionType, limit int) error {
	return malformed(CmdInfer, "option %#02x: want 1..%d bytes of UTF-8", uint8(t), limit)
}

func (m *Infer) appendOption(dst []byte, t OptionType) ([]byte, error) {
	str, limit, u8, u16, u32 := m.field(t)
	switch {
	case str != nil:
		if len(*str) == 0 || len(*str) > limit || !utf8.ValidString(*str) {
			return dst, badString(t, limit)
		}
		return append(append(dst, byte(t), byte(len(*str))), *str...), nil
	case u8 != nil:
		return append(dst, byte(t), 1, *u8), nil
	case u16 != nil:
		return binary.BigEndian.AppendUint16(append(dst, byte(t), 2), *u16), nil
	case u32 != nil:
		return binary.BigEndian.AppendUint32(append(dst, byte(t), 4), *u32), nil
	}
	return append(dst, byte(t), 0), nil
}

func (m *Infer) UnmarshalBody(b []byte) error {
	*m = Infer{}
	if len(b) < 2 {
		return malformed(CmdInfer, "%d bytes, need options length and a prompt", len(b))
	}
	optEnd := 1 + int(b[0])
	if optEnd >= len(b) {
		return malformed(CmdInfer, "options length %d leaves no prompt", b[0])
	}
	// A malformed body is MALFORMED even when it also carries an unknown
	// critical option: the structure is checked to the end first.
	var unsupported error
	for opts := b[1:optEnd]; len(opts) > 0; {
		if len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			return malformed(CmdInfer, "option list truncated")
		}
		t, v := OptionType(opts[0]), opts[2:2+int(opts[1])]
		opts = opts[2+len(v):]
		if !known(t) {
			if t&optCritical != 0 && unsupported == nil {
				unsupported = fmt.Errorf("%w: %#02x", ErrUnsupportedOption, uint8(t))
			}
			continue // an unknown hint, skipped
		}
		if m.Set.Has(t) {
			return malformed(CmdInfer, "option %#02x repeated", uint8(t))
		}
		m.Set = m.Set.With(t)
		if err := m.setOption(t, v); err != nil {
			return err
		}
	}
	m.Prompt = string(b[optEnd:])
	if !utf8.ValidString(m.Prompt) {
		return malformed(CmdInfer, "prompt is not UTF-8")
	}
	return unsupported
}

func (m *Infer) setOption(t OptionType, v []byte) error {
	str, limit, u8, u16, u32 := m.field(t)
	size := 0
	switch {
	case u8 != nil:
		size = 1
	case u16 != nil:
		size = 2
	case u32 != nil:
		size = 4
	}
	if str == nil && len(v) != size {
		return malformed(CmdInfer, "option %#02x has %d bytes, want %d", uint8(t), len(v), size)
	}
	switch {
	case str != nil:
		if len(v) == 0 || len(v) > limit || !utf8.Valid(v) {
			return badString(t, limit)
		}
		*str = string(v)
	case u8 != nil:
		*u8 = v[0]
	case u16 != nil:
		*u16 = binary.BigEndian.Uint16(v)
	case u32 != nil:
		*u32 = binary.BigEndian.Uint32(v)
	}
	return nil
}
