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
	Prompt        string
}

// OptionSet is a bit set of option types below 0x20.
type OptionSet uint32

// Has reports whether t is in the set.
func (s OptionSet) Has(t OptionType) bool { return t < 32 && s&(1<<t) != 0 }

// With returns the set with t added.
func (s OptionSet) With(t OptionType) OptionSet { return s | 1<<t }

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
	for t := OptionType(1); t < optKnownLimit; t++ {
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
// u16 or a u32 (exactly one non-nil), or all nil for the flag NEW_CHAT. One
// table serves encoding and decoding, so the two can't disagree.
func (m *Infer) field(t OptionType) (str *string, limit int, u16 *uint16, u32 *uint32) {
	switch t {
	case OptModel:
		return &m.Model, MaxModelLen, nil, nil
	case OptSystem:
		return &m.System, MaxSystemLen, nil, nil
	case OptMaxTokens:
		return nil, 0, &m.MaxTokens, nil
	case OptTemperature:
		return nil, 0, &m.Temperature, nil
	case OptTopK:
		return nil, 0, &m.TopK, nil
	case OptTopP:
		return nil, 0, &m.TopP, nil
	case OptMinP:
		return nil, 0, &m.MinP, nil
	case OptRepeatPenalty:
		return nil, 0, &m.RepeatPenalty, nil
	case OptSeed:
		return nil, 0, nil, &m.Seed
	case OptDeadlineMS:
		return nil, 0, nil, &m.DeadlineMS
	case OptContext:
		return nil, 0, nil, &m.Context
	}
	return nil, 0, nil, nil // OptNewChat: presence is the value
}

func badString(t OptionType, limit int) error {
	return malformed(CmdInfer, "option %#02x: want 1..%d bytes of UTF-8", uint8(t), limit)
}

func (m *Infer) appendOption(dst []byte, t OptionType) ([]byte, error) {
	str, limit, u16, u32 := m.field(t)
	switch {
	case str != nil:
		if len(*str) == 0 || len(*str) > limit || !utf8.ValidString(*str) {
			return dst, badString(t, limit)
		}
		return append(append(dst, byte(t), byte(len(*str))), *str...), nil
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
		if t >= optKnownLimit || t == 0 {
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
	str, limit, u16, u32 := m.field(t)
	size := 0
	switch {
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
	case u16 != nil:
		*u16 = binary.BigEndian.Uint16(v)
	case u32 != nil:
		*u32 = binary.BigEndian.Uint32(v)
	}
	return nil
}
